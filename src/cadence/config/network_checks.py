"""Adapter-type rules across keys (LoKr, LoHa, LoCon, DoRA), checked when the config loads.

Each refusal names the key and says what to do; settings that are legal but would do nothing are warnings
(ai-toolkit configs often keep `lokr_*` keys with `type: lora`, and those configs must keep running).
Rules that need the model's layer names and sizes (a `lokr_factor` that does not divide a layer, Conv
targets for LoKr/LoHa) are checked on an empty model by `cadence.networks.preflight`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cadence.config.schema import JobConfig

Issue = tuple[tuple[str | int, ...], str]

_KW = ("network", "network_kwargs")


def network_type_issues(cfg: JobConfig) -> list[Issue]:
    net, kw = cfg.network, cfg.network.network_kwargs
    issues: list[Issue] = []
    if kw.loraplus_lr_ratio and net.algo != "lora":
        issues.append(
            (
                (*_KW, "loraplus_lr_ratio"),
                f"LoRA+ gives LoRA's up (B) matrices a larger learning rate; {net.type} has no up/down pair, so "
                "the ratio is undefined (musubi-tuner refuses it too); remove it, or use type lora/locon/dora",
            )
        )
    schedule = net.alpha_schedule
    if net.algo == "lokr" and net.lokr_full_rank and schedule is not None and schedule.enabled:
        issues.append(
            (
                ("network", "alpha_schedule"),
                "alpha phases would change nothing: a LoKr with lokr_full_rank: true has two full "
                "factors, no rank and scale 1 (LyCORIS and ComfyUI ignore its alpha); set lokr_full_rank: false "
                "and network.linear to a rank, or disable the schedule",
            )
        )
    if net.uses_dora:
        issues += _dora_issues(cfg)
    if cfg.save.format == "diffusers":
        if net.algo in ("lokr", "loha"):
            issues.append(
                (
                    ("save", "format"),
                    f"{net.type} has no diffusers layout: diffusers' load_lora_weights reads LoRA only; use "
                    "save.format: comfyui (ComfyUI loads LoKr and LoHa)",
                )
            )
        elif net.uses_dora and not kw.wd_on_output:
            issues.append(
                (
                    ("save", "format"),
                    "diffusers (PEFT) DoRA keeps one magnitude per output row, this DoRA one per input column "
                    "(network_kwargs.wd_on_output: false, the axis ComfyUI applies exactly); set "
                    "wd_on_output: true to train PEFT's axis, or use save.format: comfyui",
                )
            )
    return issues


def _dora_issues(cfg: JobConfig) -> list[Issue]:
    net, kw = cfg.network, cfg.network.network_kwargs
    where = ("network", "type") if net.type == "dora" else (*_KW, "dora_wd")
    issues: list[Issue] = []
    if cfg.model.quantize:
        issues.append(
            (
                where,
                "DoRA rescales the base weight W itself (W' = m (W + dW) / |W + dW|), which a quantized base does "
                "not expose in full precision; set model.quantize: false, or train plain LoRA",
            )
        )
    if cfg.train.adapter_dtype == "bf16":
        issues.append(
            (
                ("train", "adapter_dtype"),
                "bf16 cannot hold DoRA's magnitudes: each is a row norm of W, and its bf16 rounding (up to 0.4%) "
                "would rescale whole rows of the base weight, more than the adapter ever learns (the first step "
                "would already differ from the base model); keep adapter_dtype fp32 with DoRA",
            )
        )
    for key, value in (("dropout", net.dropout), ("rank_dropout", kw.rank_dropout)):
        if value:
            path = ("network", key) if key == "dropout" else (*_KW, key)
            issues.append(
                (
                    path,
                    f"DoRA rebuilds each layer's weight, so {key} on the rank features has no per-sample meaning "
                    "there (LyCORIS drops rows of the merged delta instead); remove it, or use "
                    "network_kwargs.module_dropout",
                )
            )
    return issues


def network_type_warnings(cfg: JobConfig) -> list[Issue]:
    net, kw = cfg.network, cfg.network.network_kwargs
    fields = type(net).model_fields
    warnings: list[Issue] = []
    if net.algo != "lokr":
        for key in ("lokr_full_rank", "lokr_factor"):
            if getattr(net, key) != fields[key].default:
                warnings.append(
                    (("network", key), f"applies to type lokr only; type is {net.type!r}, so it does nothing")
                )
    elif "lokr_full_rank" not in net.model_fields_set:
        warnings.append(
            (
                ("network", "lokr_full_rank"),
                "is not set, and the trainers disagree on its default: the seed fork (and Cadence) use false "
                f"(the larger Kronecker factor has rank network.linear = {net.linear}, scaled by alpha/rank), "
                "ostris' ai-toolkit now uses true (both factors full, rank and alpha unused); set it explicitly",
            )
        )
    elif net.lokr_full_rank and ("linear" in net.model_fields_set or "linear_alpha" in net.model_fields_set):
        warnings.append(
            (
                ("network", "lokr_full_rank"),
                "is true: both Kronecker factors are full matrices, so network.linear and linear_alpha are not "
                "used; set lokr_full_rank: false to train that rank",
            )
        )
    if kw.wd_on_output and not net.uses_dora:
        warnings.append(((*_KW, "wd_on_output"), "applies to DoRA only (type dora or dora_wd: true)"))
    if net.conv is not None and net.algo in ("lokr", "loha"):
        warnings.append(
            (
                ("network", "conv"),
                f"{net.type} adapts Linear layers only in Cadence, so conv is not used (Wan's blocks have no Conv "
                "layers); use type locon to adapt a Conv layer such as patch_embedding",
            )
        )
    return warnings
