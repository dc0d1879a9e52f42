"""Settings that cannot go together with the `parallel` section, each refused at its own key before any
weights are read (the schema calls `parallel_conflicts` from a JobConfig validator). Torch-free.

Why each refusal: FSDP2 (`parallel.shard_base`) replaces every frozen block parameter by a shard that is
whole only inside that block's forward, so anything that moves, swaps, compiles or reads the base weights
outside the forward cannot run on it; expert parallel needs two trained experts and trains both at every
step, so settings that assume one device taking turns do not map onto it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cadence.config.schema import JobConfig

Conflict = tuple[tuple[str | int, ...], str]

# archs whose model holds two experts (models/registry.TWO_EXPERT; a test keeps them equal)
TWO_EXPERT_ARCHS = ("wan22_14b", "wan22_14b_i2v")


def _shard_base_conflicts(cfg: JobConfig) -> list[Conflict]:
    why = "with parallel.shard_base the frozen blocks are sharded over the GPUs (FSDP2)"
    out: list[Conflict] = []
    if cfg.model.low_vram:
        out.append(
            (
                ("model", "low_vram"),
                f"model.low_vram moves whole experts between GPU and CPU at every switch; {why}, which cannot "
                "be moved that way. Remove one of the two (shard_base already spreads the base over the GPUs)",
            )
        )
    if cfg.model.blocks_to_swap:
        out.append(
            (
                ("model", "blocks_to_swap"),
                f"block swap streams whole blocks in from host memory; {why}, so each GPU holds only its "
                "shard already. Set blocks_to_swap: 0 or turn parallel.shard_base off",
            )
        )
    if cfg.train.compile:
        out.append(
            (
                ("train", "compile"),
                f"regional compile of blocks wrapped by FSDP2 together with the adapters' forward hooks is not "
                f"verified; {why}. Set train.compile: false (or drop shard_base)",
            )
        )
    if cfg.model.quantize and cfg.model.qtype_name != "fp8":
        out.append(
            (
                ("model", "qtype"),
                f"{cfg.model.qtype!r} stores weights as quantizer tensor types that FSDP2 cannot shard; {why}. "
                "Use qtype: fp8 (Cadence's own storage) or turn parallel.shard_base off",
            )
        )
    if cfg.network.uses_dora:
        key = ("network", "type") if cfg.network.type == "dora" else ("network", "network_kwargs", "dora_wd")
        out.append(
            (
                key,
                f"DoRA reads the whole base weight outside the forward (its magnitude and saved delta); {why}, "
                "so outside a block's forward a rank holds only a shard. Use LoRA/LoKr/LoHa without DoRA, or "
                "drop shard_base",
            )
        )
    if cfg.parallel.expert_parallel:
        out.append(
            (
                ("parallel", "shard_base"),
                "expert parallel with sharded experts is not supported yet: a rank would still hold the other "
                "expert's whole base for samples and checkpoints. Use parallel.expert_parallel alone (each GPU "
                "holds its own expert) or parallel.shard_base alone",
            )
        )
    return out


def _expert_parallel_conflicts(cfg: JobConfig) -> list[Conflict]:
    out: list[Conflict] = []
    kw = cfg.model.model_kwargs
    if cfg.model.arch not in TWO_EXPERT_ARCHS or not (kw.train_high_noise and kw.train_low_noise):
        out.append(
            (
                ("parallel", "expert_parallel"),
                f"expert parallel trains two experts at once, one per half of the ranks; model.arch "
                f"{cfg.model.arch} with train_high_noise={kw.train_high_noise}, train_low_noise="
                f"{kw.train_low_noise} trains {'one' if cfg.model.arch in TWO_EXPERT_ARCHS else 'a single-expert model'}"
                ". Use plain data parallel (remove expert_parallel)",
            )
        )
    if cfg.train.switch_boundary_every != 1:
        out.append(
            (
                ("train", "switch_boundary_every"),
                f"switch_boundary_every={cfg.train.switch_boundary_every} sets how many steps one expert trains "
                "before the other takes over on the same device; with expert parallel both train at every "
                "round (steps 2i+1 and 2i+2 at once), which is the alternating run with switch_boundary_every: 1. "
                "Set it to 1 (docs/distributed.md)",
            )
        )
    intervals = [
        (("save", "save_every"), cfg.save.save_every),
        (("sample", "sample_every"), None if cfg.train.disable_sampling else cfg.sample.sample_every),
        (
            ("sample", "sample_start_step"),
            None if cfg.train.disable_sampling else cfg.sample.sample_start_step,
        ),
        (("train", "eval_every"), cfg.train.eval_every),
        (("train", "health", "every"), cfg.train.health.every if cfg.train.health else None),
    ]
    for where, value in intervals:
        if value is not None and value % 2:
            out.append(
                (
                    where,
                    f"{'.'.join(map(str, where))}={value} is odd; with expert parallel a round trains steps 2i+1 "
                    "(high_noise) and 2i+2 (low_noise) at once, and checkpoints, samples, evals and health checks "
                    f"happen between rounds, at even steps. Use {value + 1} or {max(2, value - 1)}",
                )
            )
    return out


def parallel_conflicts(cfg: JobConfig) -> list[Conflict]:
    """Every setting the `parallel` section rules out, at its key (inert in one process, but refused the
    same everywhere so a config that validates on a laptop runs under torchrun)."""
    out: list[Conflict] = []
    if cfg.parallel.shard_base:
        out += _shard_base_conflicts(cfg)
    if cfg.parallel.expert_parallel:
        out += _expert_parallel_conflicts(cfg)
    return out
