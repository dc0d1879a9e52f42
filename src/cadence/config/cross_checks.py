"""Checks that need several keys at once but no model, data or GPU, run when a config is loaded.

They used to fire only when training started, after minutes of model loading and caching; here they fire
in `cadence validate` and before `cadence train` touches anything, each naming the key the user wrote.
The optimizer and scheduler builders call the same functions, so the rules live in one place.
"""

from __future__ import annotations

import re
from typing import Any

from cadence.config.compat import Parts
from cadence.config.errors import closest
from cadence.config.schedule_checks import schedule_issues
from cadence.config.schema import SINGLE_EXPERT_ARCHS, JobConfig, TrainConfig

EXPERT_LR_KEYS = ("high_noise_lr", "low_noise_lr")
# Keys of train.optimizer_params each optimizer accepts (besides the per-expert lrs).
OPTIMIZER_KEYS: dict[str, tuple[str, ...]] = {
    "adamw": ("betas", "eps", "weight_decay", "amsgrad"),
    "adamw8bit": ("betas", "eps", "weight_decay", "amsgrad", "min_8bit_size", "percentile_clipping"),
    "prodigy": (
        "betas",
        "beta3",
        "eps",
        "weight_decay",
        "decouple",
        "use_bias_correction",
        "safeguard_warmup",
        "d0",
        "d_coef",
        "growth_rate",
        "slice_p",
    ),
    "adamw_schedulefree": ("betas", "eps", "weight_decay", "warmup_steps", "r", "weight_lr_power"),
}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

Issue = tuple[Parts, str]


def _did_you_mean(key: str, valid: list[str] | tuple[str, ...]) -> str:
    close = closest(key, valid)
    return f"did you mean '{close}'? " if close else ""


def optimizer_param_issues(optimizer: str, params: dict[str, Any], accepted: tuple[str, ...]) -> list[Issue]:
    """Unknown train.optimizer_params keys for `optimizer` (with a suggestion) and a malformed `betas`."""
    issues: list[Issue] = []
    valid = (*accepted, *EXPERT_LR_KEYS)
    for key in sorted(set(params) - set(valid)):
        issues.append(
            (
                ("train", "optimizer_params", key),
                f"not an option of optimizer {optimizer!r}; {_did_you_mean(key, valid)}accepted keys: "
                f"{', '.join(valid)}",
            )
        )
    betas = params.get("betas")
    if betas is not None and (not isinstance(betas, list | tuple) or len(betas) != 2):
        issues.append(
            (("train", "optimizer_params", "betas"), f"expected two numbers like [0.9, 0.999], got {betas!r}")
        )
    return issues


def compile_patterns(patterns: list[str], field: str) -> list[re.Pattern[str]]:
    """network.network_kwargs regexes, compiled; a bad one is a ValueError naming the key and pattern."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"network.network_kwargs.{field}: invalid regex {pattern!r}: {exc}") from exc
    return compiled


def _train_issues(train: TrainConfig) -> list[Issue]:
    issues: list[Issue] = []
    if train.optimizer in OPTIMIZER_KEYS:
        issues += optimizer_param_issues(
            train.optimizer, train.optimizer_params, OPTIMIZER_KEYS[train.optimizer]
        )
    elif train.optimizer == "automagic":
        issues += automagic_param_issues(train.optimizer_params)
    expert_lrs = [train.optimizer_params.get(key) for key in EXPERT_LR_KEYS]
    base_lrs = (
        train.lr,
        *(float(v) for v in expert_lrs if isinstance(v, int | float) and not isinstance(v, bool)),
    )
    issues += schedule_issues(
        train.lr_scheduler,
        train.optimizer == "automagic",
        train.steps,
        train.lr_warmup_steps,
        train.lr_scheduler_params,
        base_lrs,
    )
    issues += _timestep_issues(train)
    return issues


# Keys that shape one timestep distribution only; changed for another one they would do nothing. (A value
# equal to the default passes: resolved configs written to run folders carry every key.)
TIMESTEP_KEYS: dict[str, str] = {
    "flow_shift": "shift",
    "logit_mean": "logit_normal",
    "logit_std": "logit_normal",
}


def _timestep_issues(train: TrainConfig) -> list[Issue]:
    issues: list[Issue] = [
        (
            ("train", key),
            f"applies only with timestep_type: {kind}, but timestep_type is '{train.timestep_type}'; "
            f"set timestep_type: {kind} or drop {key}",
        )
        for key, kind in TIMESTEP_KEYS.items()
        if getattr(train, key) != TrainConfig.model_fields[key].default and train.timestep_type != kind
    ]
    if train.min_denoising_steps > min(train.max_denoising_steps, 999):
        issues.append(
            (
                ("train", "min_denoising_steps"),
                f"{train.min_denoising_steps} is above max_denoising_steps {train.max_denoising_steps}: no timestep "
                "is left (indices of ai-toolkit's 1000 training timesteps, 0 = pure noise; min <= max <= 999)",
            )
        )
    return issues


# automagic's options (optim/automagic.py OPTION_KEYS; a test keeps the two equal), each also per expert
AUTOMAGIC_KEYS = ("lr", "min_lr", "max_lr", "lr_bump", "beta2", "eps", "clip_threshold", "weight_decay")
EXPERT_PREFIXES = ("high_noise_", "low_noise_")
# ai-toolkit's Automagic arguments Cadence accepts only at their off value (dropped before building)
AUTOMAGIC_OFF_KEYS = {"do_paramiter_swapping": False, "paramiter_swapping_factor": None}


def automagic_param_issues(params: dict[str, Any]) -> list[Issue]:
    """train.optimizer_params of automagic: each key an option (optionally high_noise_/low_noise_ prefixed),
    a typo named with its likely meaning at load time instead of failing when the optimizer is built."""
    valid = [*AUTOMAGIC_KEYS, *(pre + key for pre in EXPERT_PREFIXES for key in AUTOMAGIC_KEYS)]
    issues: list[Issue] = []
    for key in sorted(params):
        if key in valid:
            continue
        where = ("train", "optimizer_params", key)
        if key in AUTOMAGIC_OFF_KEYS:
            if key == "do_paramiter_swapping" and params[key] is not False:
                issues.append(
                    (
                        where,
                        "ai-toolkit's parameter swapping (training a random share of the weights at a time) is not "
                        "implemented; remove it (or set it to false)",
                    )
                )
            continue
        issues.append(
            (
                where,
                f"not an option of optimizer 'automagic'; {_did_you_mean(key, valid)}accepted keys: "
                f"{', '.join(AUTOMAGIC_KEYS)}, each optionally prefixed with high_noise_ or low_noise_",
            )
        )
    return issues


def _network_issues(cfg: JobConfig) -> list[Issue]:
    issues: list[Issue] = []
    kwargs = cfg.network.network_kwargs
    for field in ("include_patterns", "exclude_patterns"):
        try:
            compile_patterns(getattr(kwargs, field), field)
        except ValueError as exc:
            issues.append((("network", "network_kwargs", field), str(exc).split(": ", 1)[1]))
    schedule = cfg.network.alpha_schedule
    if schedule is not None and schedule.enabled:
        overrides = (schedule.per_expert or {}).values()
        has_phases = schedule.preset or schedule.conv_alpha_phases or schedule.alpha_phases
        if not has_phases and not any(o.conv_alpha_phases or o.alpha_phases for o in overrides):
            issues.append(
                (
                    ("network", "alpha_schedule"),
                    "enabled: true but no phases: set conv_alpha_phases, alpha_phases or preset: video|image",
                )
            )
    from cadence.config.network_checks import network_type_issues  # LoKr / LoHa / LoCon / DoRA rules

    return issues + network_type_issues(cfg)


def _job_issues(cfg: JobConfig) -> list[Issue]:
    issues: list[Issue] = []
    if not _DEVICE.fullmatch(cfg.device):
        issues.append((("device",), f"got {cfg.device!r}; use auto, cpu, cuda, cuda:N or mps"))
    if cfg.model.blocks_to_swap and cfg.train.compile:
        issues.append(
            (
                ("model", "blocks_to_swap"),
                "cannot be combined with train.compile: swapping moves weights between devices under the "
                "compiled graph; turn one of them off",
            )
        )
    if cfg.train.eval_every and not cfg.train.eval_split and not any(ds.is_eval for ds in cfg.datasets):
        issues.append(
            (
                ("train", "eval_every"),
                "is set but there is no eval set: mark a dataset with datasets[].is_eval: true or set "
                "train.eval_split (e.g. 0.1)",
            )
        )
    if cfg.train.adapter_dtype == "bf16" and cfg.train.optimizer != "automagic":
        issues.append(
            (
                ("train", "adapter_dtype"),
                f"bf16 LoRA weights with optimizer {cfg.train.optimizer!r} lose every update smaller than half "
                "their bf16 spacing (a rank-16 down matrix of a 5120-wide layer: 46% of its elements did not move "
                "in two AdamW steps at lr 2e-5, none stuck in fp32); keep fp32 (the default: a rank-16 LoRA of a "
                "14B expert is ~0.3 GiB) or use optimizer automagic, which rounds stochastically",
            )
        )
    if cfg.network.network_kwargs.loraplus_lr_ratio and cfg.train.optimizer == "automagic":
        issues.append(
            (
                ("network", "network_kwargs", "loraplus_lr_ratio"),
                "cannot be used with optimizer automagic: its per-element learning rates are clamped to "
                "[min_lr, max_lr] for every matrix, which erases the up/down ratio; remove it or use adamw",
            )
        )
    if cfg.model.arch in SINGLE_EXPERT_ARCHS:
        single = (
            f"only applies to the two-expert Wan 2.2 A14B archs; {cfg.model.arch} has a single transformer"
        )
        if cfg.train.switch_boundary_every != 1:
            issues.append((("train", "switch_boundary_every"), f"{single}. Remove it"))
        if cfg.sample.guidance_scale_2 is not None:
            issues.append((("sample", "guidance_scale_2"), f"{single}; use sample.guidance_scale. Remove it"))
    return issues


def config_warnings(cfg: JobConfig) -> list[Issue]:
    """Settings that load but may not do what the user meant; logged, not refused (ai-toolkit configs switch
    quantization off with `quantize: false` and keep their qtype, and those configs must keep running)."""
    from cadence.config.network_checks import network_type_warnings
    from cadence.data.option_checks import data_option_warnings

    return (
        data_option_warnings(cfg)
        + _quantize_warnings(cfg)
        + network_type_warnings(cfg)
        + _text_encoder_warnings(cfg)
        + _schedule_warnings(cfg)
    )


def _text_encoder_warnings(cfg: JobConfig) -> list[Issue]:
    """unload_text_encoder trains every item on one prompt (ai-toolkit's behaviour): say what that leaves out."""
    train = cfg.train
    if not train.unload_text_encoder:
        return []
    if train.cache_text_embeddings:
        return [
            (
                ("train", "unload_text_encoder"),
                "with cache_text_embeddings the cached captions are trained on (as in ai-toolkit); the text encoder "
                "is freed after caching either way",
            )
        ]
    prompt = (
        f"the trigger word {cfg.trigger_word!r}" if cfg.trigger_word else "a blank prompt (no trigger_word)"
    )
    issues: list[Issue] = [
        (
            ("train", "unload_text_encoder"),
            f"every item trains on {prompt} and captions are not read, as in ai-toolkit; set "
            "train.cache_text_embeddings: true to train on captions with the text encoder freed",
        )
    ]
    for i, ds in enumerate(cfg.datasets):
        if ds.caption_dropout_rate:
            issues.append(
                (
                    ("datasets", i, "caption_dropout_rate"),
                    f"{ds.caption_dropout_rate:g} has no effect with train.unload_text_encoder (no captions are read; "
                    "ai-toolkit ignores it there too)",
                )
            )
    return issues


def _schedule_warnings(cfg: JobConfig) -> list[Issue]:
    """ai-toolkit's `linear` is torch's LinearLR, which without parameters rises from lr/3 to lr; Cadence's
    linear decays to 0 (diffusers' linear). A config written for ai-toolkit gets told."""
    train = cfg.train
    if train.lr_scheduler != "linear" or train.lr_scheduler_params:
        return []
    return [
        (
            ("train", "lr_scheduler"),
            "linear decays the lr to 0 over train.steps (diffusers' linear schedule); ai-toolkit's linear is "
            "torch's LinearLR, which rises from lr/3 to lr: for that, set lr_scheduler_params: {start_factor: "
            "0.3333, end_factor: 1.0}",
        )
    ]


def _quantize_warnings(cfg: JobConfig) -> list[Issue]:
    """A qtype without its switch quantizes nothing: a user who wrote `qtype: fp8` for memory would load the
    full-precision model. (The default qtype passes: resolved configs carry every key.)"""
    issues: list[Issue] = []
    model = cfg.model
    for switch, key in (("quantize", "qtype"), ("quantize_te", "qtype_te")):
        value = getattr(model, key)
        if not getattr(model, switch) and value != type(model).model_fields[key].default:
            issues.append(
                (
                    ("model", key),
                    f"{value!r} is set but model.{switch} is false, so nothing is quantized (full "
                    f"precision, more memory); set model.{switch}: true to quantize, or remove {key}",
                )
            )
    return issues


def _arch_issues(cfg: JobConfig) -> list[Issue]:
    """Settings the chosen arch cannot honour (the seed ignored them silently): config/family_checks.py."""
    from cadence.config.family_checks import family_issues

    return family_issues(cfg)


def config_issues(cfg: JobConfig) -> list[Issue]:
    """Every cross-key problem of a validated config, each at the key the user wrote."""
    from cadence.data.option_checks import data_option_issues

    return (
        _train_issues(cfg.train)
        + _network_issues(cfg)
        + _job_issues(cfg)
        + _arch_issues(cfg)
        + data_option_issues(cfg)
    )
