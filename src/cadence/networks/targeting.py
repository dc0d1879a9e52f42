"""Which modules of a transformer get a LoRA adapter.

Rules (network.network_kwargs), all matched against the module's full name with the seed trainer's
`transformer.` prefix, e.g. `transformer.blocks.0.attn1.to_q`, so that filters written for ai-toolkit
configs keep working. The regex filters also match the original-Wan names (`blocks.0.self_attn.q`, the
naming of musubi-tuner and ComfyUI), so patterns written for those tools select the same layers (see
`_matchers` for a negative pattern written for one naming):

* Candidates: every `nn.Linear`; `nn.Conv1d/2d/3d` only when `network.conv` is set (or type is locon).
* Default selection: every Linear inside the transformer blocks (the model family's block lists: Wan's
  `blocks.`, FLUX's `transformer_blocks.` and `single_transformer_blocks.`, ...) - attention q/k/v/o,
  cross-attention (incl. the image k/v of Wan 2.1 I2V) and the FFN.
* `only_if_contains` (substrings) *restricts* the selection to names containing any of them.
* `ignore_if_contains` (substrings) removes modules, always.
* `exclude_patterns` (regex, `re.search`) removes modules, except those `include_patterns` names:
  musubi-tuner's rule, so `exclude_patterns: ['.*']` + `include_patterns: ['.*attn.*']` trains attention only.
* `include_patterns` also *add* modules outside the default selection (`proj_out`, or the Conv3d
  `patch_embedding` when `network.conv` is set).

No module left is an error that names the filters and lists some available names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from torch import nn

from cadence.config.cross_checks import compile_patterns
from cadence.config.schema import NetworkConfig
from cadence.networks import keymap

log = logging.getLogger(__name__)

NAME_PREFIX = "transformer."
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_conv(module: nn.Module) -> bool:
    return isinstance(module, CONV_TYPES)


def select_targets(root: nn.Module, cfg: NetworkConfig, warn: bool = True) -> dict[str, nn.Module]:
    """Return {diffusers module name: module} of the modules to adapt, in `named_modules` order.
    `warn=False` for a dry run (the real selection says the same things once)."""
    kw = cfg.network_kwargs
    names_map, default = keymap.for_root(root), _default_selection(root)
    candidates = [
        (name, module, NAME_PREFIX + name, _original_name(name, names_map))
        for name, module in root.named_modules()
        if name and (isinstance(module, nn.Linear) or is_conv(module))
    ]
    available = [full for _, _, full, _ in candidates]
    names = [(full, original) for _, _, full, original in candidates]
    include = _matchers(compile_patterns(kw.include_patterns, "include_patterns"), names)
    exclude = _matchers(compile_patterns(kw.exclude_patterns, "exclude_patterns"), names)
    selected: dict[str, nn.Module] = {}
    for name, module, full, original in candidates:
        named = any(match(full, original) for match in include)
        if is_conv(module) and cfg.conv_rank is None:
            if named and warn:
                log.warning("%s matches include_patterns but network.conv is not set; not targeted", full)
            continue
        chosen = (isinstance(module, nn.Linear) and default(name)) or named
        if chosen and kw.only_if_contains:
            chosen = any(s in full for s in kw.only_if_contains)
        if chosen and any(s in full for s in kw.ignore_if_contains):
            chosen = False
        if chosen and not named and any(match(full, original) for match in exclude):
            chosen = False
        if chosen:
            selected[name] = module
    if not selected:
        raise ValueError(_no_match_message(cfg, available))
    if warn and cfg.conv_rank is not None and not any(is_conv(m) for m in selected.values()):
        log.warning(
            "network.conv=%s (or type locon) is set but no Conv layer is targeted: Wan's transformer blocks are Linear-only "
            "(ai-toolkit configs set conv for models with conv layers). Name a conv layer in "
            "network_kwargs.include_patterns (e.g. 'patch_embedding') to adapt it; conv_alpha phases then "
            "drive the Linear adapters",
            cfg.conv_rank,
        )
    return selected


def _default_selection(root: nn.Module):
    """name -> whether a Linear is adapted by default: the model family's rule (every Linear inside its
    repeated blocks), Wan's `blocks.` for a module of no registered family."""
    from cadence.models.registry import family_for_transformer

    family = family_for_transformer(root)
    return family.default_target if family is not None else (lambda name: name.startswith("blocks."))


def _original_name(name: str, names: keymap.KeyMap) -> str | None:
    """The original spelling of a diffusers module name (the family's key map), when it knows one."""
    try:
        return names.to_original(name)
    except (KeyError, ValueError):
        return None


def _matchers(patterns: list[re.Pattern[str]], names: list[tuple[str, str | None]]):
    """One test per pattern, over both namings (`transformer.`-prefixed diffusers, original-Wan), so
    `.*(self_attn|ffn).*` means both parts. One exception: a pattern that matches every module under one
    naming but only some under the other was written for the other (e.g. `^(?!transformer\\.blocks\\.0\\.)`:
    under original names nothing starts with `transformer.`); it is tested on that naming alone."""
    comparable = [(full, original) for full, original in names if original is not None]
    tests = []
    for pattern in patterns:
        by_full = sum(1 for full, _ in comparable if pattern.search(full))
        by_original = sum(1 for _, original in comparable if pattern.search(original))
        total = len(comparable)
        if by_full == total and 0 < by_original < total:
            tests.append(
                lambda _full, original, p=pattern: original is not None and p.search(original) is not None
            )
        elif by_original == total and 0 < by_full < total:
            tests.append(lambda full, _original, p=pattern: p.search(full) is not None)
        else:
            tests.append(
                lambda full, original, p=pattern: (
                    p.search(full) is not None or (original is not None and p.search(original) is not None)
                )
            )
    return tests


def _no_match_message(cfg: NetworkConfig, available: list[str]) -> str:
    kw = cfg.network_kwargs
    filters = {
        "only_if_contains": kw.only_if_contains,
        "ignore_if_contains": kw.ignore_if_contains,
        "include_patterns": kw.include_patterns,
        "exclude_patterns": kw.exclude_patterns,
    }
    shown = ", ".join(f"{k}={v}" for k, v in filters.items() if v) or "defaults"
    sample = ", ".join(available[:8]) + (" ..." if len(available) > 8 else "")
    return (
        f"no module matched the LoRA target filters ({shown}). Names are matched with the "
        f"'{NAME_PREFIX}' prefix; available Linear/Conv modules include: {sample}. "
        "only_if_contains restricts the default block Linears; use include_patterns to add modules outside "
        "the blocks."
    )


def named_targets(root: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """{name: module} for exactly `names` (diffusers names below `root`); a missing or non-Linear/Conv
    name is an error that lists it."""
    modules, names = dict(root.named_modules()), set(names)
    missing = sorted(n for n in names if n not in modules)
    if missing:
        raise ValueError(f"{len(missing)} module name(s) not in the model, e.g. {missing[:3]}")
    wrong = sorted(n for n in names if not (isinstance(modules[n], nn.Linear) or is_conv(modules[n])))
    if wrong:
        raise ValueError(f"not Linear/Conv layers, so no LoRA can attach: {wrong[:3]}")
    return {n: m for n, m in modules.items() if n in names}  # named_modules order
