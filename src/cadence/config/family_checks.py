"""Settings the chosen model family or arch cannot honour, each refused at the key the user wrote.

The facts come from the arch's registered spec (`cadence.models.registry.arch_spec`): how many experts it
has, whether it is image-to-video only / text-to-video only, whether it makes images or videos, whether its
family has a training adapter (`assistant_lora_path`) or a scheduler shift per size (`flux_shift`). No family is
named here.
"""

from __future__ import annotations

from cadence.config.schema import JobConfig

Issue = tuple[tuple[str | int, ...], str]


def family_issues(cfg: JobConfig) -> list[Issue]:
    from cadence.models.registry import arch_names, arch_spec, family_of

    issues: list[Issue] = []
    arch, kw = cfg.model.arch, cfg.model.model_kwargs
    spec, family = arch_spec(arch), family_of(arch)
    if not spec.two_experts:
        off = [k for k in ("train_high_noise", "train_low_noise") if not getattr(kw, k)]
        for key in off + ["boundary_ratio"] * (kw.boundary_ratio is not None):
            issues.append(
                (
                    ("model", "model_kwargs", key),
                    f"only applies to the two-expert Wan 2.2 A14B archs; {arch} has a single transformer. Remove it",
                )
            )
    elif not (kw.train_high_noise or kw.train_low_noise):
        issues.append(
            (
                ("model", "model_kwargs"),
                "train_high_noise and train_low_noise are both false; nothing to train",
            )
        )
    i2v_archs = ", ".join(a for a in arch_names() if arch_spec(a).i2v != "never")
    for i, ds in enumerate(cfg.datasets):
        if ds.do_i2v and spec.i2v == "never":
            what = "an image model" if spec.image_only else "text-to-video only"
            issues.append(
                (
                    ("datasets", i, "do_i2v"),
                    f"is true but model.arch {arch!r} is {what}; use an I2V arch ({i2v_archs}) or set do_i2v: false",
                )
            )
        elif not ds.do_i2v and spec.i2v == "always":
            issues.append(
                (
                    ("datasets", i, "do_i2v"),
                    f"is false but model.arch {arch!r} is image-to-video only; remove do_i2v or set it to true",
                )
            )
        if spec.image_only and any(n != 1 for n in ds.frame_counts):
            issues.append(
                (
                    ("datasets", i, "num_frames"),
                    f"{spec.title} ({arch}) is an image model: it trains on single frames; set num_frames: 1 "
                    "(a video in the folder then gives frames as images)",
                )
            )
    if spec.image_only:
        if cfg.sample.num_frames != 1:
            issues.append((("sample", "num_frames"), f"{spec.title} samples images; set num_frames: 1"))
        for i, item in enumerate(cfg.sample.samples):
            if item.num_frames not in (None, 1):
                issues.append(
                    (
                        ("sample", "samples", i, "num_frames"),
                        f"{spec.title} samples images; remove num_frames",
                    )
                )
    if cfg.model.assistant_lora_path and not family.training_adapter:
        issues.append(
            (
                ("model", "assistant_lora_path"),
                f"{spec.title} has no training adapter (ai-toolkit's assistant LoRAs are for step-distilled "
                "models: FLUX.1-schnell, Z-Image-Turbo); remove it",
            )
        )
    if cfg.model.assistant_lora_path and cfg.model.recovery_adapter:
        issues.append(
            (
                ("model", "assistant_lora_path"),
                "cannot be used with an accuracy-recovery adapter (model.qtype 'uint4|FILE'), as in ai-toolkit: "
                "both are frozen LoRAs over the base; keep one",
            )
        )
    if cfg.train.timestep_type in ("flux_shift", "lumina2_shift") and not family.scheduler_shift:
        issues.append(
            (
                ("train", "timestep_type"),
                f"{cfg.train.timestep_type} shifts by the model scheduler's shift at each latent size, and "
                f"{spec.title}'s scheduler has none (ai-toolkit trains it as plain shift there): use timestep_type: "
                "shift with train.flow_shift (Wan: 3.0, or 5.0 for wan22_5b)",
            )
        )
    from cadence.models.single_file import source_issues  # single-file checkpoints and extras_name_or_path

    return issues + source_issues(cfg.model)


def layout_issues(cfg: JobConfig, names: list[str]) -> list[tuple[str, str]]:
    """(key, message) when the LoRA file layout cannot hold the configured adapters on these target modules in
    the model's family (FLUX fuses q/k/v in the ComfyUI/kohya layouts: plain LoRA only, all members): found when
    the targets are known, before any caching, instead of at the first checkpoint."""
    from cadence.config.errors import format_path
    from cadence.models.registry import family_of
    from cadence.networks.algos import dora_axis

    if cfg.save.format not in ("comfyui", "kohya"):
        return []
    keymap = family_of(cfg.model.arch).keymap
    problems = keymap.layout_problems(names, cfg.network.algo, dora_axis(cfg.network) is not None)
    return (
        [(format_path(("save", "format")), f"{cfg.save.format}: " + "; ".join(problems))] if problems else []
    )
