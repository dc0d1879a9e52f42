"""The training loop: one readable class that composes the parts built in `train.setup`.

Per optimizer step: the router names the expert, its adapter trains on `gradient_accumulation`
micro-batches with timesteps drawn inside that expert's range, the update is clipped and applied, and one
metrics line is written. Nothing here knows which model family it trains.

Several processes (`setup.parallel`, docs/distributed.md): each rank trains its rows of the global batch
and the gradients are averaged before clipping; with expert parallel a round trains one step of each expert
at once (steps 2i+1 and 2i+2 on two rank groups) and every rank then takes both lines through the same
bookkeeping. Stops, saves and samples are agreed between the ranks at the end of a round.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import torch

from cadence.data.cache import CacheMissError
from cadence.parallel.context import skip_draws
from cadence.stop_flag import StopFlag
from cadence.train.batches import Batch
from cadence.train.checks import evaluation_weights
from cadence.train.objective import combined_weights, flow_matching_loss, model_input_and_target
from cadence.train.prefetch import BatchPrefetcher
from cadence.train.setup import TrainingSetup
from cadence.train.stops import TrainingStopped

log = logging.getLogger(__name__)
MAX_MISSING_BATCHES = 20


@dataclass
class StepResult:
    loss: float | None  # None: the step was skipped (non-finite loss or gradient)
    expert: str
    t_mean: float
    grad_norm: float | None
    seconds: float
    lrs: dict[str, float]  # the learning rates this step used


class Trainer:
    def __init__(self, setup: TrainingSetup, stop: StopFlag | None = None, prefetch: bool = True) -> None:
        self.s = setup
        self.stop = stop or StopFlag()
        self._owns_stop_flag = stop is None
        self.data_seconds = 0.0  # batch assembly time of the current step
        self.missing_batches = 0  # batches skipped because their cache entry vanished mid-run
        self._times: list[tuple[float, float]] = []  # (step, data) seconds since the last timing line
        self._params: dict[str, list[torch.Tensor]] = {}  # expert -> trainable tensors
        # the next batch read on a background thread (exact: see train/prefetch.py); False: read in the step
        accumulation = setup.cfg.train.gradient_accumulation
        self.prefetch = BatchPrefetcher(setup, accumulation) if prefetch else None

    # ------------------------------------------------------------------------------------------ step
    def _micro_batch_loss(self, expert: str, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.s
        spec = s.expert_specs[expert]
        streams = s.randomness.of(expert)
        loading = time.perf_counter()
        batch = self._next_batch(streams.captions, expert)
        if self.prefetch is not None:
            self.prefetch.guess_after(expert, micro)  # read while this one computes
        batch = batch.to(s.device, s.dtype, non_blocking=s.device.type == "cuda")
        self.data_seconds += time.perf_counter() - loading
        # drawn for the whole global batch, this rank's rows kept: N ranks draw what one process would
        rows = s.parallel.rows(batch.latents.shape[0])
        shape = (rows.total, *batch.latents.shape[1:])
        noise = torch.randn(shape, generator=streams.noise, dtype=torch.float32, device=streams.noise.device)
        noise = noise[rows.start : rows.stop]  # drawn where the generator lives: the device on CUDA
        timesteps = s.timesteps  # flux_shift: the distribution of the model's shift at this latent size
        if timesteps.by_resolution:
            timesteps = timesteps.at_shift(s.adapter.timestep_shift(batch.latents.shape))
        t = timesteps.sample(rows.total, spec.t_low, spec.t_high, streams.timesteps)[rows.start : rows.stop]
        t_dev = t.to(device=s.device, dtype=torch.float32)
        noisy, target = model_input_and_target(batch.latents, noise.to(s.device), t_dev, s.dtype)
        s.networks[expert].multiplier = batch.network_multiplier  # network_weight; kept through backward
        prediction = s.adapter.predict(expert, noisy, t_dev, batch.text, batch.cond)
        # timestep_type weighted: ai-toolkit's per-timestep weight; datasets[].loss_multiplier (x reg_weight)
        weights = combined_weights(timesteps.loss_weights(t), batch.loss_weights)
        loss = flow_matching_loss(prediction, target, s.adapter.loss_mask(batch.cond), weights)
        return loss, t

    def _next_batch(self, captions: Any, expert: str | None = None) -> Batch:
        """The sampler's next batch; one whose cache entry vanished mid-run (another job rewrote or removed
        it) is skipped with a counted warning, and the next one is used: a long run does not die for it.
        Caption dropout draws for the other ranks' rows too (one draw per item), so the stream stays the
        one a single process would read."""
        s = self.s
        for _ in range(MAX_MISSING_BATCHES):
            indices = s.sampler.next_batch()
            rows = s.parallel.rows(len(indices))
            skip_draws(captions, rows.start)
            try:
                if self.prefetch is not None and expert is not None:
                    self.prefetch.hand_over(expert, indices, captions)  # the entries read ahead, if these
                return s.batches.assemble(indices, captions)
            except CacheMissError as miss:
                self.missing_batches += 1
                log.warning("skipping a batch (%d so far): %s", self.missing_batches, miss)
            finally:
                skip_draws(captions, rows.after)
        raise TrainingStopped(
            f"{MAX_MISSING_BATCHES} batches in a row had no cache entry; run `cadence cache CONFIG` again and "
            "resume (the run continues from its last checkpoint)"
        )

    def train_step(self) -> StepResult:
        s = self.s
        started = time.perf_counter()
        self.data_seconds = 0.0
        expert = s.router.current()
        network = s.networks[expert]
        params = self._trainable(expert)
        s.optimizer.zero_grad(set_to_none=True)
        accum = s.cfg.train.gradient_accumulation
        losses: list[torch.Tensor] = []  # read by the host once, after the update (they are only logged)
        t_values: list[torch.Tensor] = []
        finite = True
        for micro in range(accum):
            loss, t = self._micro_batch_loss(expert, micro)
            t_values.append(t)
            if not torch.isfinite(loss):
                finite = False
                break
            (loss / accum).backward()
            losses.append(loss.detach())
        network.multiplier = 1.0  # datasets[].network_weight acts on training batches only
        finite = s.parallel.reduce_gradients(params, finite)  # mean over the ranks; one rank's NaN skips all
        t_mean = float(torch.cat(t_values).mean())
        grad_norm = s.clip_grad_norm(params, s.cfg.train.max_grad_norm) if finite else None
        if grad_norm is None or not math.isfinite(grad_norm):
            # skipped: no update, but the step counts (schedule, router) so the run stays aligned with steps
            [t_mean] = s.parallel.mean([t_mean])
            lrs = s.lr_fields()
            s.optimizer.zero_grad(set_to_none=True)
            s.lr_scheduler.step()
            s.router.advance()
            return StepResult(None, expert, t_mean, grad_norm, time.perf_counter() - started, lrs)
        s.hub.stability.before_step(expert, params)
        s.optimizer.step()
        if s.ema is not None:
            s.ema.update(expert)  # this expert's own step only: an idle expert's EMA does not decay
        lrs = s.lr_fields()  # after the step (automagic's mask as applied), before the scheduler moves on
        s.lr_scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)  # free gradients before eval, sampling and saving
        s.router.advance()
        values = torch.stack(losses).tolist()  # the same floats one float() per micro-batch gave
        loss, t_mean = s.parallel.mean(
            [sum(values) / len(values), t_mean]
        )  # the line's loss: all ranks' mean
        return StepResult(loss, expert, t_mean, grad_norm, time.perf_counter() - started, lrs)

    def _trainable(self, expert: str) -> list[torch.Tensor]:
        """The expert's trainable tensors, listed once per run (issue 23: listing 800 LoRA tensors each
        step cost more than the stability measurement on them)."""
        params = self._params.get(expert)
        if params is None:
            net = self.s.networks[expert]
            params = self._params[expert] = [p for p in net.parameters() if p.requires_grad]
        return params

    def idle_step(self) -> None:
        """Expert parallel: another rank group trains this step's expert. The data order, the schedule and
        the rotation move on here as they do there, so every rank's state stays the alternating run's."""
        s = self.s
        s.sampler.skip(s.cfg.train.gradient_accumulation)
        with warnings.catch_warnings():  # torch warns about a scheduler step without optimizer.step()
            warnings.filterwarnings("ignore", message="Detected call of", category=UserWarning)
            s.lr_scheduler.step()
        s.router.advance()

    def _train_round(self, plan: list[tuple[int, str]]) -> dict[int, StepResult]:
        """The steps of one round (one step, or one per expert group with expert parallel)."""
        s = self.s
        results: dict[int, StepResult] = {}
        for step, expert in plan:
            s.hub.apply_alphas([expert])  # a pending phase change reaches this expert now
            if s.parallel.trains(expert):
                self._place_experts()
                results[step] = self.train_step()
            else:
                self.idle_step()
        return s.parallel.share_round(s, plan, results)

    def _after_update(self, result: StepResult) -> None:
        """Gradient stability compares this update with the expert's previous one (skipped steps: none)."""
        if result.loss is not None:  # on the tensors before_step snapshotted
            self.s.hub.stability.after_step(result.expert)

    # --------------------------------------------------------------------------------------- metrics
    def metrics_row(self, step: int, result: StepResult) -> dict[str, Any]:
        s = self.s
        row: dict[str, Any] = {
            "step": step,
            "timestamp": datetime.now().isoformat(timespec="microseconds"),
            "loss": result.loss,
            "expert": s.expert_label(result.expert),
            "t": result.t_mean,
            "grad_norm": result.grad_norm,
            "step_time_s": result.seconds,
            "data_time_s": self.data_seconds,
            "samples_per_s": s.cfg.train.batch_size
            * s.cfg.train.gradient_accumulation
            * s.parallel.group_size
            / max(result.seconds, 1e-9),
            "epoch": s.sampler.state_dict()["epoch"],
        }
        if s.device.type == "cuda":
            row["peak_memory_gb"] = torch.cuda.max_memory_allocated(s.device) / 2**30
        row.update(result.lrs)
        row["nan_skipped"] = self.s.hub.nan_total
        row.update(s.hub.observe(step, result.expert, result.loss, result.grad_norm))
        return row

    # ------------------------------------------------------------------------------------------- run
    def run(self) -> int:
        s = self.s
        start_step = s.start_step
        total = s.cfg.train.steps
        if start_step >= total:
            log.info("run already at step %d of %d; raise train.steps to continue", start_step, total)
            s.close()
            return 0
        if self._owns_stop_flag:
            self.stop.install()
        progress = s.progress(start_step, total)
        step = start_step
        s.recorder.interrupted = lambda: self.stop.requested
        ending: tuple[str, dict[str, Any]] | None = None  # the finish/failure event, sent before closing
        began = f"resumed at step {start_step}" if start_step else "started"
        start = {"step": start_step, "total_steps": total, "resumed": start_step > 0}
        s.recorder.event("start", {**start, "message": f"{began}, {total} steps"})
        try:
            if start_step == 0:
                self._sample(0)
            elif s.samples is not None and s.parallel.resample_needed(not s.samples.written(start_step)):
                self._sample(start_step)  # killed while sampling that checkpoint step: re-sampled
            while step < total:
                if step == start_step and s.parallel.any(self.stop.requested)[0]:
                    log.info("stopped by %s before the first step; nothing new to save", self._stop_name())
                    ending = _finish("stopped", step, total, f"stopped by {self._stop_name()}")
                    return 0
                plan = s.parallel.round_steps(step + 1, total, s.router)
                step = plan[0][0]  # what a failure while training names
                results = self._train_round(plan)
                saving = stopping = False
                for step, _ in plan:
                    result = results[step]
                    self._after_update(result)
                    self._count_nan(result)
                    row = self.metrics_row(step, result)
                    if (
                        step == plan[-1][0]
                    ):  # saves, samples and stops come between rounds, agreed by all ranks
                        wanted = (
                            step % s.cfg.save.save_every == 0 or step == total or s.checks.forces_save(step)
                        )
                        saving, stopping = s.parallel.any(wanted or self.stop.requested, self.stop.requested)
                    row.update(s.checks.run(step, saving, row, stopping=stopping))
                    s.recorder.write(row)
                    self._stop_on_nan_streak(step)
                    progress.update(1)
                    progress.set_postfix(
                        loss=f"{result.loss:.4f}" if result.loss is not None else "nan",
                        expert=result.expert,
                        refresh=False,
                    )
                    self._summary(step, row)
                if saving:
                    s.recorder.save(s, step)
                if not s.parallel.any(self.stop.requested)[0]:
                    self._sample(step)
                # also a signal that arrived during checks, the write or sampling (on any rank)
                stop_now, health_stop = s.parallel.any(self.stop.requested, s.checks.stop_reason is not None)
                if stop_now:
                    if not saving:
                        s.recorder.save(s, step)
                    log.info("stopped by %s at step %d; checkpoint saved", self._stop_name(), step)
                    said = f"stopped by {self._stop_name()}, checkpoint saved"
                    ending = _finish("stopped", step, total, said)
                    return 0
                if health_stop:
                    reason = s.parallel.main_value(s.checks.stop_reason)  # the main rank runs the checks
                    log.warning("health stop at step %d: %s", step, reason)
                    if not saving:
                        s.recorder.save(s, step)
                    ending = _finish("health_stop", step, total, f"health stop: {reason}")
                    return 0
            ending = _finish("completed", step, total, f"finished {step} steps")
        except TrainingStopped as stop:
            log.error("%s", stop)
            ending = ("failure", {"step": step, "error": str(stop), "message": str(stop)})
            return 3
        except BaseException as error:
            text = f"{type(error).__name__}: {error}"
            ending = ("failure", {"step": step, "error": text, "message": f"crashed at step {step}: {text}"})
            raise
        finally:
            progress.close()
            if self.prefetch is not None:
                self.prefetch.close()
            if self._owns_stop_flag:
                self.stop.uninstall()
            if ending is not None:
                s.recorder.event(*ending)
            s.close()
        log.info("finished %d steps; outputs in %s; %s", step, s.paths.run_dir, s.index.summary())
        return 0

    def _sample(self, step: int) -> None:
        samples = self.s.samples
        if samples is not None and samples.due(step):
            with evaluation_weights(self.s.optimizer, self.s.ema):
                written = samples.run(step)
            self.s.parallel.barrier()  # every rank's share is written before training goes on
            if written:
                message = f"{len({p.stem for p in written})} sample(s) at step {step}"
                files = [str(p) for p in written]
                self.s.recorder.event("sample", {"step": step, "files": files, "message": message})

    def _place_experts(self) -> None:
        """With low_vram only the active expert stays on the accelerator."""
        s = self.s
        if not s.cfg.model.low_vram:
            return
        active = s.parallel.resident(s.router.current())  # expert parallel: this rank's own expert
        for spec in s.expert_specs.values():
            if spec.name == active:
                s.adapter.onload(spec.name)
            else:
                s.adapter.offload(spec.name)

    def _timing(self, step: int, row: dict[str, Any]) -> None:
        """performance_log_every: mean step and data time over the last interval (seed key)."""
        every = self.s.cfg.performance_log_every
        self._times.append((row["step_time_s"], row["data_time_s"]))
        if every and step % every == 0:
            step_mean = sum(t for t, _ in self._times) / len(self._times)
            data_mean = sum(d for _, d in self._times) / len(self._times)
            log.info(
                "timing: steps %d-%d mean %.3f s/step, of which %.3f s data loading",
                step - len(self._times) + 1,
                step,
                step_mean,
                data_mean,
            )
            self._times.clear()

    def _summary(self, step: int, row: dict[str, Any]) -> None:
        self._timing(step, row)
        every = self.s.cfg.train.log_every
        if step % every:
            return
        parts = [f"step {step}", f"loss_ema_50={_fmt(row.get('loss_ema_50'))}"]
        parts.append(f"improvement_rate={_fmt(row.get('loss_improvement_rate'))}")
        parts.append(f"stability_avg={_fmt(row.get('gradient_stability_avg'))}")
        if row.get("phase") is not None:
            parts.append(f"phase={row['phase']}")
        log.info("summary: %s", " ".join(parts))

    def _stop_name(self) -> str:
        """The signal that stopped the run (another rank's, when this one saw none: "a signal")."""
        return self.stop.signal_name or "a signal on another rank"

    def _count_nan(self, result: StepResult) -> None:
        hub = self.s.hub
        if result.loss is not None and math.isfinite(result.loss):
            hub.nan_streak = 0
            return
        hub.nan_streak += 1
        hub.nan_total += 1

    def _stop_on_nan_streak(self, step: int) -> None:
        if not self.s.hub.nan_streak:
            return
        log.warning("step %d: non-finite loss, update skipped (%d in a row)", step, self.s.hub.nan_streak)
        limit = self.s.cfg.train.max_nan_steps
        if self.s.hub.nan_streak >= limit:
            raise TrainingStopped(
                f"stopping at step {step}: {self.s.hub.nan_streak} non-finite losses in a row "
                f"(train.max_nan_steps={limit}); {self.s.recorder.last_checkpoint_note()}. Lower train.lr, "
                "check the data, or use train.dtype: bf16/fp32."
            )


def _finish(status: str, step: int, total: int, message: str) -> tuple[str, dict[str, Any]]:
    return "finish", {"step": step, "status": status, "total_steps": total, "message": message}


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"
