"""Build every part of a training run from a resolved config, and restore it from a checkpoint.

`build_training` is the only place that knows how the parts fit together; each part stays testable alone.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cadence.config.errors import ConfigError, format_path
from cadence.config.family_checks import layout_issues
from cadence.config.schema import JobConfig
from cadence.config.validate import config_hash, dump_resolved
from cadence.data.cache import LatentCache, TextCache
from cadence.data.cache_command import run_caches
from cadence.data.caption_tokens import with_caption_variants
from cadence.data.dataset import DatasetIndex, build_dataset_index
from cadence.data.regularization import with_regularization
from cadence.data.sampler import BucketBatchSampler
from cadence.models.base import ExpertSpec, ModelAdapter
from cadence.models.registry import load_model_adapter
from cadence.networks.existing import expert_files, load_pretrained, merge_base_lora
from cadence.networks.lora import LoRANetwork
from cadence.networks.targeting import select_targets
from cadence.optim.factory import (
    build_optimizer,
    clip_grad_norm,
    configured_optimizer_keys,
    needs_train_eval_mode,
)
from cadence.optim.param_groups import build_param_groups
from cadence.optim.schedulers import build_lr_scheduler, keep_configured_settings
from cadence.parallel.context import ParallelContext
from cadence.perf import apply_memory_options, apply_quantization
from cadence.sampling import TrainingSampler, validate_samples
from cadence.sampling.state import sampling_state
from cadence.schedule.experts import ExpertRouter
from cadence.schedule.timesteps import TimestepSampler, range_problems, sampler_for
from cadence.tools.health import HealthMonitor
from cadence.train.batches import BatchAssembler
from cadence.train.checkpoint import CheckpointManager, RunPaths, UnreadableCheckpoint
from cadence.train.checks import PeriodicChecks, evaluation_weights
from cadence.train.ema import AdapterEMA
from cadence.train.eval import FixedEval
from cadence.train.fixed_prompt import fixed_prompt, needs_text_encoder_freed, use_fixed_prompt
from cadence.train.machine import machine_issues
from cadence.train.metrics_hub import MetricsHub
from cadence.train.precision import resolve_device, resolve_dtype
from cadence.train.recorder import RunRecorder
from cadence.train.resume_check import check_resumable, group_names
from cadence.train.rng import TrainingRandomness, seed_everything
from cadence.train.run_history import NO_STATE, refuse_fresh_start, unreadable_states

log = logging.getLogger(__name__)

# Weight magnitudes need one matmul per adapted module: measured every N steps, not every step.
MAGNITUDE_EVERY = 25


@dataclass
class TrainingSetup:
    cfg: JobConfig
    paths: RunPaths
    device: torch.device
    dtype: torch.dtype
    adapter: ModelAdapter
    index: DatasetIndex
    expert_specs: dict[str, ExpertSpec]
    networks: dict[str, LoRANetwork]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    router: ExpertRouter
    timesteps: TimestepSampler
    sampler: BucketBatchSampler
    batches: BatchAssembler
    randomness: TrainingRandomness
    hub: MetricsHub
    recorder: RunRecorder
    checks: PeriodicChecks
    samples: TrainingSampler | None = None
    ema: AdapterEMA | None = None  # train.ema_config: what files, samples, eval and |ΔW| use
    start_step: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    parallel: ParallelContext = field(
        default_factory=ParallelContext
    )  # the other ranks (none in one process)

    clip_grad_norm = staticmethod(clip_grad_norm)

    # -------------------------------------------------------------------------------- loop helpers
    def expert_label(self, expert: str) -> str | None:
        return self.hub.label(expert)

    def lr_fields(self) -> dict[str, float]:
        """The step size each param group (and expert) applies: automagic the mean of its per-element lr
        mask; Prodigy d·lr (its `lr` is a multiplier of the distance estimate `d` it adapts per expert)."""
        fields: dict[str, float] = {}
        rates = getattr(self.optimizer, "get_learning_rates", None)
        values = (
            rates()
            if rates
            else [float(g.get("lr", 0.0)) * float(g.get("d", 1.0)) for g in self.optimizer.param_groups]
        )
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            fields[f"lr_{group.get('name', len(fields))}"] = lr
            expert = group.get("expert")
            if expert and self.hub.label(expert) and f"lr_{expert}" not in fields:
                fields[f"lr_{expert}"] = lr
        return fields

    def state_dict(self, step: int) -> dict[str, Any]:
        from cadence.train.rng import capture_global_rng

        state = {
            "step": step,
            "config_hash": config_hash(self.cfg),
            "optimizer_name": self.cfg.train.optimizer,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "router": self.router.state_dict(),
            "sampler": self.sampler.state_dict(),
            "randomness": self.randomness.state_dict(),
            "global_rng": capture_global_rng(),
            "hub": self.hub.state_dict(),
            "checks": self.checks.state_dict(),
            "tracking": self.recorder.tracking_state(),  # the W&B run id: a resume continues that run
            "alphas": {e: {"linear": n.linear_alpha, "conv": n.conv_alpha} for e, n in self.networks.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }
        return self.parallel.complete_state(state, self)  # every rank's random and sampler state

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{e}::{k}": v for e, net in self.networks.items() for k, v in net.state_dict().items()}

    def progress(self, start: int, total: int) -> tqdm:
        return tqdm(
            total=total,
            initial=start,
            desc=self.cfg.name,
            unit="step",
            dynamic_ncols=True,
            disable=not self.parallel.is_main,
        )

    def close(self) -> None:
        self.recorder.close()


def _trained_experts(cfg: JobConfig, adapter: ModelAdapter) -> list[str]:
    kw = cfg.model.model_kwargs
    wanted = {"high_noise": kw.train_high_noise, "low_noise": kw.train_low_noise}
    return [spec.name for spec in adapter.experts if wanted.get(spec.name, True)]


def _network_preflight(cfg: JobConfig) -> list[tuple[str, str]]:
    folder = Path(cfg.model.folder_spec).expanduser()  # extras_name_or_path beside single-file checkpoints
    if not folder.is_dir():
        return []  # a hub id: the dry run after loading checks the same
    from cadence.networks.preflight import loader_notes, network_issues

    issues = network_issues(cfg, folder)
    if not issues:
        for line in loader_notes(cfg):  # which Wan tools will load the files (validate prints the same)
            log.info("%s", line)
    return issues


def _build_networks(
    cfg: JobConfig, adapter: ModelAdapter, experts: list[str], device: torch.device
) -> dict[str, LoRANetwork]:
    networks: dict[str, LoRANetwork] = {}
    positions = [spec.name for spec in adapter.experts]
    for expert in experts:
        transformer = adapter.transformer(expert)
        # Each expert gets its own adapter, initialised from its own seed: never one shared adapter. The seed
        # follows the expert's place in the model, so training one expert alone starts it identically.
        offset = positions.index(expert)
        net = LoRANetwork(transformer, cfg.network, name=expert, seed=cfg.train.seed + 1000 * (offset + 1))
        net.to(device)  # adapters stay on the training device even when low_vram parks the base on the CPU
        net.apply()
        networks[expert] = net
    return networks


def build_training(cfg: JobConfig, parallel: ParallelContext | None = None) -> TrainingSetup:
    """Every part of the run; `parallel` (from `cadence.parallel.launch.start_parallel`) is wired in here
    and nowhere else: device and seeds per rank, caches filled by the main rank first, replicated adapters,
    the sharded base, sampler shards, samples per rank, and the main rank's recorder and health checks."""
    parallel = parallel or ParallelContext()
    paths = RunPaths(cfg.run_dir, cfg.name)
    # this machine's problems (GPU, packages) before minutes of model loading and caching
    problems = [(format_path(where), message) for where, message in machine_issues(cfg)]
    problems += validate_samples(cfg)
    problems += _network_preflight(cfg)  # adapters on an empty model: factors, kinds, filters
    if problems:
        raise ConfigError(problems)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    device = parallel.device(resolve_device(cfg.device))
    dtype = resolve_dtype(cfg.train.dtype)
    seed_everything(parallel.seed(cfg.train.seed))

    adapter = load_model_adapter(cfg.model, device, dtype)
    merge_base_lora(cfg.model.lora_path, adapter)  # into the full-precision weights, before quantizing
    apply_quantization(
        adapter, cfg.model
    )  # before caching and before LoRA: quantizers may swap Linear classes
    for expert in _trained_experts(cfg, adapter):  # target filters that match nothing: before caching
        targets = select_targets(adapter.transformer(expert), cfg.network, warn=False)
        if problems := layout_issues(
            cfg, list(targets)
        ):  # a file layout that cannot hold them (FLUX's fused qkv)
            raise ConfigError(problems)
    timesteps = sampler_for(cfg.train)  # min/max_denoising_steps that leave an expert nothing: before caching
    ranges = {
        s.name: (s.t_low, s.t_high) for s in adapter.experts if s.name in _trained_experts(cfg, adapter)
    }
    if problems := range_problems(timesteps, ranges):
        raise ConfigError(problems)
    index = build_dataset_index(
        cfg, adapter.spatial_multiple, adapter.temporal_multiple, adapter.native_fps, cfg.train.seed
    )
    prompt = fixed_prompt(cfg)  # train.unload_text_encoder: one prompt for every item, as ai-toolkit
    if prompt is not None:
        use_fixed_prompt(index, prompt)
    latent_cache, text_cache = parallel.main_first(lambda: _prepare_caches(cfg, adapter, index))

    experts = _trained_experts(cfg, adapter)
    networks = _build_networks(cfg, adapter, experts, device)
    parallel.replicate(networks)
    for expert in experts:
        adapter.transformer(expert).train()
    # attention backend, checkpointing, block swap, adapter dtype, regional compile (after LoRA hooks exist)
    perf = apply_memory_options(adapter, cfg, experts, networks)
    parallel.shard_frozen(
        adapter
    )  # parallel.shard_base: FSDP2 over the frozen blocks (after hooks and checkpointing)
    groups = build_param_groups(networks, cfg.train, cfg.network.network_kwargs.loraplus_lr_ratio)
    optimizer = build_optimizer(cfg.train, groups)
    lr_scheduler = build_lr_scheduler(
        optimizer,
        cfg.train.lr_scheduler,
        cfg.train.steps,
        cfg.train.lr_warmup_steps,
        cfg.train.lr_scheduler_params,
        rotation=(experts, cfg.train.switch_boundary_every),
    )
    labelled = tuple(e for e in experts if e != "main") if len(adapter.experts) > 1 else ()
    alpha = _alpha_scheduler(cfg, networks, experts)
    window = cfg.network.alpha_schedule.window if cfg.network.alpha_schedule else 200
    hub = MetricsHub(networks, labelled, window, alpha, MAGNITUDE_EVERY)
    ema = AdapterEMA(networks, cfg.train.ema_config.ema_decay) if cfg.train.ema_config.use_ema else None
    hub.weights_view = lambda: evaluation_weights(optimizer, ema)
    hub.weights_measured = (
        "ema"
        if ema is not None
        else "schedule_free_average"
        if needs_train_eval_mode(optimizer)
        else "trained"
    )
    hub.apply_alphas()

    eval_items = _split_eval(cfg, index)
    batches = BatchAssembler(
        index.train_items,
        latent_cache,
        text_cache,
        adapter.pad_text,
        [0.0 if prompt is not None else ds.caption_dropout_rate for ds in cfg.datasets],
    )
    # every expert's file name, trained this run or not: pruning a step removes all its LoRA files
    labels = [spec.name for spec in adapter.experts] if len(adapter.experts) > 1 else [None]
    recorder = parallel.recorder(
        cfg, paths, CheckpointManager(paths, cfg.save.max_step_saves_to_keep, labels)
    )
    evaluator = None
    if eval_items:
        eval_batches = BatchAssembler(
            eval_items, latent_cache, text_cache, adapter.pad_text, [0.0] * len(cfg.datasets)
        )
        specs = [spec for spec in adapter.experts if spec.name in networks]
        evaluator = FixedEval(
            list(range(len(eval_items))), eval_batches, specs, timesteps, seed=cfg.train.seed
        )
    elif cfg.train.eval_every:
        raise ValueError(
            "train.eval_every is set but there is no eval set: mark a dataset with datasets[].is_eval: true "
            "or set train.eval_split (e.g. 0.1)"
        )
    health = parallel.main_only(HealthMonitor(cfg.train.health)) if cfg.train.health else None

    def run_eval(ev: FixedEval) -> dict[str, float]:
        # no grad, adapters in eval mode (no LoRA dropout), global RNG restored, low_vram placement per expert
        with evaluation_weights(optimizer, ema), sampling_state(adapter, networks):
            return ev.evaluate(adapter, device, dtype, label=hub.label)

    checks = PeriodicChecks(
        evaluator,
        cfg.train.eval_every,
        health,
        run_eval,
        hub.magnitudes,  # |ΔW| of the weights users get; an expert idle since its last probe is not re-read
        paths.metrics,
        recorder.checkpoints,
    )
    hub.emit = checks.emit = recorder.event  # alpha phase changes and health warnings reach the sinks
    setup = TrainingSetup(
        cfg=cfg,
        paths=paths,
        device=device,
        dtype=dtype,
        adapter=adapter,
        index=index,
        expert_specs={spec.name: spec for spec in adapter.experts},
        networks=networks,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        router=ExpertRouter(experts, cfg.train.switch_boundary_every),
        timesteps=timesteps,
        sampler=BucketBatchSampler(
            index.train_items,
            cfg.train.batch_size,
            cfg.train.seed,
            shards=parallel.group_size,
            shard=parallel.group_rank,
        ),
        batches=batches,
        randomness=TrainingRandomness(
            cfg.train.seed,
            tuple(spec.name for spec in adapter.experts),
            noise_device=str(device) if device.type == "cuda" else "cpu",  # noise drawn on the GPU
        ),
        hub=hub,
        recorder=recorder,
        checks=checks,
        ema=ema,
        extras={"perf": perf},
        parallel=parallel,
    )
    # datasets[].is_reg: every other step of each expert; shuffle_tokens / token_dropout_rate: varied captions
    accumulation = cfg.train.gradient_accumulation
    setup.sampler = with_regularization(setup.sampler, index.train_items, setup.router.current, accumulation)
    batches.texts = with_caption_variants(batches.texts, index.items, adapter.encode_prompts)
    setup.start_step = _resume(setup)
    if not cfg.train.disable_sampling:
        setup.samples = TrainingSampler(cfg, adapter, networks, paths.samples)
        parallel.share_samples(setup.samples)
    parallel.on_main(lambda: _write_resolved_config(cfg, paths.config))
    return setup


def _prepare_caches(
    cfg: JobConfig, adapter: ModelAdapter, index: DatasetIndex
) -> tuple[LatentCache, TextCache]:
    """Encode what is not cached yet (the same code as `cadence cache`); drop items whose media failed to
    decode (counted, not fatal)."""
    filled = run_caches(cfg, adapter, index)
    latent_report = filled.latent_report
    if latent_report.skipped:
        bad = {entry.path for entry in latent_report.skipped}
        index.train_items = [item for item in index.train_items if item.path not in bad]
        index.eval_items = [item for item in index.eval_items if item.path not in bad]
        index.skipped.extend(latent_report.skipped)
        log.warning(
            "skipped %d file(s) that failed to decode: %s", len(bad), ", ".join(sorted(map(str, bad)))
        )
    if not index.train_items:
        raise ValueError("no usable training items are left after caching; see the warnings above")
    if needs_text_encoder_freed(cfg):  # cache_text_embeddings / unload_text_encoder: every text is cached
        adapter.unload_text_encoder()
    log.info("caches ready: %d latent entries (%d encoded now)", len(index.items), latent_report.encoded)
    log.info(index.summary())
    return filled.latents, filled.texts


def _split_eval(cfg: JobConfig, index: DatasetIndex) -> list:
    """The eval set: datasets marked is_eval, else a seeded `train.eval_split` share of the train *files*.

    Whole files are held out, with every window and repeat of them: a clip whose windows sat on both sides
    would measure the eval loss on frames the adapter trained on."""
    if index.eval_items or cfg.train.eval_split <= 0:
        return list(index.eval_items)
    files = sorted({str(item.path) for item in index.train_items})
    count = max(1, round(cfg.train.eval_split * len(files)))
    if count >= len(files):
        raise ValueError(
            f"train.eval_split={cfg.train.eval_split} holds out all {len(files)} training files; lower it"
        )
    chosen = set(random.Random(cfg.train.seed).sample(files, count))
    eval_items = [item for item in index.train_items if str(item.path) in chosen]
    index.train_items = [item for item in index.train_items if str(item.path) not in chosen]
    log.info(
        "held out %d of %d files (%d items) for the eval loss (train.eval_split)",
        count,
        len(files),
        len(eval_items),
    )
    return eval_items


def _alpha_scheduler(cfg: JobConfig, networks: dict[str, LoRANetwork], experts: list[str]) -> Any | None:
    schedule = cfg.network.alpha_schedule
    if schedule is None or not schedule.enabled:
        return None
    from cadence.schedule.alpha_phases import AlphaPhaseScheduler

    kinds = {"linear"} if any(n.has_linear for n in networks.values()) else set()
    if any(n.has_conv for n in networks.values()):
        kinds.add("conv")
    return AlphaPhaseScheduler.from_config(schedule, experts, kinds)


def _resume(setup: TrainingSetup) -> int:
    """Restore the newest complete checkpoint, if any; returns the step to continue from."""
    manager = setup.recorder.checkpoints
    chosen: dict[str, Any] = {}

    def choose() -> int | None:
        """The main rank cleans the folder and picks the checkpoint; every rank then loads that one."""
        if (manager.paths.run_dir / "training_state").is_dir():
            manager.clean_leftovers()  # temp files and folders of a save that a kill -9 interrupted
        newest = _newest_readable(manager)
        if newest is None:
            set_aside = unreadable_states(manager.paths)
            why = (
                f"its training state is unreadable ({', '.join(p.name for p in set_aside)} set aside)"
                if set_aside
                else NO_STATE
            )
            refuse_fresh_start(manager.paths, manager.labels, why)
            return None
        chosen["newest"] = newest
        return newest[0]

    picked = setup.parallel.on_main(choose)
    if picked is None:
        _start_from_pretrained(setup)
        setup.recorder.open(resume_step=None)
        return 0
    step, adapters, state = chosen.get("newest") or (picked, *manager.load(picked))
    check_resumable(
        manager.paths.run_dir,
        step,
        adapters,
        state,
        setup.networks,
        setup.cfg.train.optimizer,
        group_names(setup.optimizer.state_dict()),
    )
    for expert, net in setup.networks.items():
        prefix = f"{expert}::"
        net.load_state_dict({k[len(prefix) :]: v for k, v in adapters.items() if k.startswith(prefix)})

    def load_optimizer() -> None:
        setup.optimizer.load_state_dict(state["optimizer"])
        setup.lr_scheduler.load_state_dict(state["lr_scheduler"])

    changed = keep_configured_settings(
        setup.optimizer,
        setup.lr_scheduler,
        load_optimizer,
        configured_optimizer_keys(setup.cfg.train.optimizer),
    )
    for change in changed:
        log.warning("resume: the config changed an optimizer setting, now in use: %s", change)
    setup.router.load_state_dict(state["router"])
    setup.sampler.load_state_dict(state["sampler"])
    setup.randomness.load_state_dict(state["randomness"])
    setup.hub.load_state_dict(state["hub"])
    setup.checks.load_state_dict(state.get("checks", {}))
    _restore_ema(setup, state.get("ema"), step)
    for expert, alphas in state["alphas"].items():
        setup.networks[expert].set_alpha(linear=alphas["linear"], conv=alphas["conv"])
    _warn_changed_alpha(setup.cfg, state["alphas"])
    from cadence.train.rng import restore_global_rng

    restore_global_rng(state["global_rng"])
    setup.parallel.restore_state(state, setup, step)  # this rank's own streams (or fresh ones, another world)
    if state.get("config_hash") != config_hash(setup.cfg):
        log.warning("the config changed since step %d was saved; resuming with the new config", step)
    setup.recorder.open(resume_step=step, tracking_state=state.get("tracking"))
    log.info("resumed from step %d (%s)", step, manager.paths.state_dir(step))
    return step


def _start_from_pretrained(setup: TrainingSetup) -> None:
    """`network.pretrained_lora_path` on a fresh run: the adapters (and the EMA) start from that file."""
    spec = setup.cfg.network.pretrained_lora_path
    if not spec:
        return
    experts = [s.name for s in setup.adapter.experts]
    load_pretrained(
        setup.networks,
        expert_files(spec, experts, "network.pretrained_lora_path"),
        "network.pretrained_lora_path",
    )
    if setup.ema is not None:
        setup.ema.reset()


def _restore_ema(setup: TrainingSetup, saved: dict[str, Any] | None, step: int) -> None:
    """The EMA continues exactly from the checkpoint; switching it on or off across a resume is said."""
    ema = setup.ema
    if ema is None:
        if saved is not None:
            log.warning(
                "resume: the checkpoint kept an EMA (train.ema_config.use_ema) that this config turns off; "
                "files saved from now on hold the trained weights, not the average"
            )
        return
    if saved is None:
        ema.reset()
        log.warning(
            "resume: train.ema_config.use_ema is on but step %d was trained without it; the EMA starts from "
            "the weights of step %d",
            step,
            step,
        )
        return
    ema.load_state_dict(saved)
    if float(saved.get("decay", ema.decay)) != ema.decay:
        log.warning(
            "resume: ema_decay changed from %g to %g; the new decay is used", saved["decay"], ema.decay
        )


def _newest_readable(
    manager: CheckpointManager,
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest checkpoint whose state reads back; an unreadable one is set aside with a warning naming
    it, and the one before it is tried (its LoRA files stay: the resumed run writes that step again)."""
    for step in reversed(manager.complete_steps()):
        try:
            adapters, state = manager.load(step)
        except UnreadableCheckpoint as bad:
            moved = manager.set_aside(step)
            log.warning(
                "the checkpoint of step %d cannot be read (%s); it is set aside as %s and the run resumes from "
                "the newest earlier checkpoint, if there is one",
                step,
                bad.problem,
                moved,
            )
            continue
        return step, adapters, state
    return None


def _warn_changed_alpha(cfg: JobConfig, saved: dict[str, dict[str, float | None]]) -> None:
    """Without an alpha schedule a resumed run keeps the alpha its weights were trained with (a new alpha
    would rescale every update so far); a config asking for another one is told so, not ignored."""
    schedule = cfg.network.alpha_schedule
    if schedule is not None and schedule.enabled:
        return  # the schedule's restored phase decides the alpha
    wanted = {"linear": cfg.network.resolved_linear_alpha, "conv": cfg.network.resolved_conv_alpha}
    for expert, alphas in saved.items():
        for kind, value in wanted.items():
            if alphas.get(kind) is not None and value is not None and alphas[kind] != value:
                log.warning(
                    "network.%s_alpha is %g in the config but %s was trained with %g: the resumed run keeps "
                    "%g (its weights were learned at that strength); to train at %g start a new run "
                    "(another name)",
                    kind,
                    value,
                    expert,
                    alphas[kind],
                    alphas[kind],
                    value,
                )


def _write_resolved_config(cfg: JobConfig, target: Path) -> None:
    from cadence.atomic import atomic_write_text

    atomic_write_text(target, dump_resolved(cfg))
