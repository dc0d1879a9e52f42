"""Everything a run writes: metrics lines, checkpoints with their LoRA files, and the tracking sinks.

The metrics JSONL is the record (the UI, analyze and the health checks read it); TensorBoard, W&B, webhooks
and the Hub push are sinks in a `SinkSet` that get the same rows plus events, and whose failures never stop
training. `tracking=False` builds a recorder without sinks (a distributed run's non-main ranks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cadence.config.schema import JobConfig
from cadence.config.validate import config_hash
from cadence.metrics.jsonl import MetricsLog
from cadence.networks.formats import save_lora_file
from cadence.tracking import RunInfo, SinkSet
from cadence.tracking.build import configured_sinks
from cadence.tracking.secrets import Redactor, redact_config, redact_logs
from cadence.train.checkpoint import CheckpointManager, RunPaths
from cadence.train.checks import evaluation_weights
from cadence.train.finite import describe_nonfinite, nonfinite_tensors
from cadence.train.precision import resolve_dtype
from cadence.train.stops import TrainingStopped

if TYPE_CHECKING:
    from cadence.train.setup import TrainingSetup

log = logging.getLogger(__name__)


class RunRecorder:
    def __init__(
        self, cfg: JobConfig, paths: RunPaths, checkpoints: CheckpointManager, tracking: bool = True
    ) -> None:
        self.cfg = cfg
        self.paths = paths
        self.checkpoints = checkpoints
        self.metrics: MetricsLog | None = None
        self.sinks = SinkSet(active=tracking)
        self.redactor = Redactor.for_config(cfg)
        # set by the training loop: true once a stop was requested (a final upload stops waiting)
        self.interrupted: Callable[[], bool] = lambda: False
        self._unredact_logs: Callable[[], None] = lambda: None

    def open(self, resume_step: int | None, tracking_state: dict[str, Any] | None = None) -> None:
        """Open the metrics log (dropping lines after the checkpoint a resume starts from) and the sinks;
        `tracking_state` is what the sinks saved in that checkpoint (the W&B run id)."""
        truncate_after = resume_step or 0
        self.metrics = MetricsLog(self.paths.metrics)
        dropped = self.metrics.truncate_after(truncate_after)
        if dropped:
            log.info(
                "dropped %d metrics lines written after step %d (not in the checkpoint)",
                dropped,
                truncate_after,
            )
        self._unredact_logs = redact_logs(self.redactor)  # third-party DEBUG lines quote webhook paths
        for sink in configured_sinks(self.cfg, self.paths, lambda: self.interrupted(), self.event):
            self.sinks.add(sink)
        run = RunInfo(
            name=self.cfg.name,
            run_dir=self.paths.run_dir,
            config=redact_config(self.cfg),
            total_steps=self.cfg.train.steps,
            redactor=self.redactor,
            restored=dict(tracking_state or {}),
        )
        self.sinks.open(run, resume_step)

    def write(self, row: dict[str, Any]) -> None:
        assert self.metrics is not None, "RunRecorder.open() must run first"
        self.metrics.write(row)
        self.sinks.write(row)

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        """Tell the sinks about a run event (`cadence.tracking.sink.EVENT_KINDS`); text in it is scrubbed
        of secrets (an error message may quote a URL)."""
        clean = {k: self.redactor.scrub(v) if isinstance(v, str) else v for k, v in payload.items()}
        self.sinks.event(kind, clean)

    def tracking_state(self) -> dict[str, Any]:
        return self.sinks.state_dict()

    def lora_metadata(self, setup: TrainingSetup, step: int, expert: str, net: Any) -> dict[str, str]:
        return {
            "step": str(step),
            "expert": expert,
            "rank": str(self.cfg.network.linear),
            "alpha": str(net.linear_alpha),
            "conv_alpha": "" if net.conv_alpha is None else str(net.conv_alpha),
            "base_model": self.cfg.model.base_model(expert),  # the expert's checkpoint file, else the folder
            "arch": self.cfg.model.arch,
            "config_hash": config_hash(self.cfg),
            "job_name": self.cfg.name,
            "trainer": "cadence",
            "weights": setup.hub.weights_measured,  # trained, ema or schedule_free_average
        }

    def last_checkpoint_note(self) -> str:
        """Which checkpoint a stopped run can go back to, in words (true at the moment it is said)."""
        latest = self.checkpoints.latest_step()
        if latest is None:
            return "no checkpoint was saved before this point"
        return (
            f"the last good checkpoint is step {latest} ({self.checkpoints.paths.state_dir(latest)}), intact"
        )

    def check_finite(self, setup: TrainingSetup, step: int, save_dtype: Any) -> None:
        """Refuse to write a checkpoint whose adapters hold inf/NaN: in the training state (fp32 masters) or
        once cast to save.dtype (an fp16 file overflows above 65504)."""
        problems = []
        note = self.last_checkpoint_note()
        for expert, net in setup.networks.items():
            state = net.state_dict()
            if bad := nonfinite_tensors(state):
                problems.append(describe_nonfinite(bad, expert) + " hold inf/NaN")
            elif bad := nonfinite_tensors(state, save_dtype):
                problems.append(
                    describe_nonfinite(bad, expert)
                    + f" overflow to inf in save.dtype {self.cfg.save.dtype} (|w| > {torch.finfo(save_dtype).max:g})"
                )
        if problems:
            raise TrainingStopped(
                f"stopping at step {step}: the adapters are not finite, so checkpoint {step} was not written: "
                + "; ".join(problems)
                + f". {note[:1].upper()}{note[1:]}. Lower train.lr (or train.max_grad_norm), check the data, "
                "or save in bf16/fp32 (save.dtype) if only the fp16 cast overflows"
            )

    def save(self, setup: TrainingSetup, step: int) -> None:
        outputs: dict[Path, Any] = {}
        save_dtype = resolve_dtype(self.cfg.save.dtype)
        with evaluation_weights(setup.optimizer, setup.ema):
            self.check_finite(setup, step, save_dtype)
            for expert, net in setup.networks.items():
                label = setup.hub.label(expert)
                metadata = self.lora_metadata(setup, step, expert, net)
                tensors = net.to_lora_tensors()
                outputs[self.paths.lora_file(step, label)] = _lora_writer(
                    tensors, metadata, self.cfg.save.format, save_dtype
                )
        if setup.hub.alpha is not None:
            text = json.dumps(setup.hub.alpha.to_seed_json(), indent=2)
            outputs[self.paths.alpha_json(step)] = lambda tmp, text=text: tmp.write_text(text)
        if self.metrics is not None:
            self.metrics.sync()
        self.sinks.flush()
        self.checkpoints.save(step, outputs, setup.adapter_tensors(), setup.state_dict(step))
        names = ", ".join(p.name for p in outputs)
        log.info("checkpoint %d saved: %s", step, names)
        files = [str(p) for p in outputs]
        self.event("checkpoint", {"step": step, "files": files, "message": f"saved {names}"})

    def close(self) -> None:
        self.sinks.close()
        if self.metrics is not None:
            self.metrics.close()
        self._unredact_logs()


def _lora_writer(tensors: dict, metadata: dict[str, str], layout: str, dtype: Any) -> Any:
    def write(tmp: Path) -> None:
        save_lora_file(tmp, tensors, metadata, layout, dtype)

    return write
