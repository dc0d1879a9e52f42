"""What a run folder's checkpoint must share with the config that resumes it.

A resume continues the same adapter tensors and optimizer state, so the rank, the targeted modules, the
trained experts and the optimizer must be the ones that saved it. Changed, they used to surface as a
PyTorch traceback about state-dict sizes or an optimizer message naming the wrong cause; here they are
listed in words, with what to do. The adapter type is told apart by the parameter names each algorithm
registers (down/up, lokr_*, hada_*, dora_scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class ResumeMismatchError(ValueError):
    """The config asks for a different network/experts/optimizer than the checkpoint it would resume."""


_PARAM_ALGOS = (("lokr_", "LoKr"), ("hada_", "LoHa"), ("down", "LoRA"), ("up", "LoRA"))


def adapter_kinds(keys) -> list[str]:
    """Adapter algorithms (and DoRA) in a network state dict, from its parameter names."""
    kinds = set()
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        kinds.update(name for prefix, name in _PARAM_ALGOS if leaf.startswith(prefix))
        if leaf == "dora_scale":
            kinds.add("DoRA")
    return sorted(kinds)


def _expert_differences(
    expert: str, saved: dict[str, torch.Tensor], now: dict[str, torch.Tensor]
) -> list[str]:
    before, after = adapter_kinds(saved), adapter_kinds(now)
    if before != after:
        return [
            f"{expert}: it trained {'+'.join(before) or 'nothing'} adapters, this config builds "
            f"{'+'.join(after) or 'nothing'} (network.type or network_kwargs.dora_wd changed)"
        ]
    out = []
    shapes = [k for k in saved.keys() & now.keys() if saved[k].shape != now[k].shape]
    if shapes:
        key = sorted(shapes)[0]
        out.append(
            f"{expert}: {len(shapes)} LoRA tensors changed shape (e.g. {key}: saved {list(saved[key].shape)}, "
            f"now {list(now[key].shape)}), i.e. network.linear/conv (rank), or for LoKr lokr_factor / "
            "lokr_full_rank, or DoRA's wd_on_output changed"
        )
    gone, new = sorted(saved.keys() - now.keys()), sorted(now.keys() - saved.keys())
    if (gone or new) and {k.rsplit(".", 1)[0] for k in saved} == {k.rsplit(".", 1)[0] for k in now}:
        out.append(
            f"{expert}: the LoKr factors changed form (e.g. {(gone or new)[0]}): lokr_full_rank or the rank "
            "changed whether the larger factor is low-rank"
        )
    elif gone or new:
        example = (gone or new)[0]
        out.append(
            f"{expert}: the targeted modules changed ({len(gone)} saved tensors not targeted now, {len(new)} new; "
            f"e.g. {example}), i.e. network_kwargs filters or network.conv changed"
        )
    return out


def group_names(optimizer_state: dict[str, Any]) -> list[str]:
    """Parameter-group names of an optimizer state (torch's layout, or Cadence's per-expert wrapper)."""
    if "per_expert" in optimizer_state:
        return [n for inner in optimizer_state["per_expert"].values() for n in group_names(inner)]
    return [str(g.get("name", "?")) for g in optimizer_state.get("param_groups", [])]


def resume_mismatches(
    adapters: dict[str, torch.Tensor],
    state: dict[str, Any],
    networks: dict[str, Any],
    optimizer: str,
    groups_now: list[str] | None = None,
) -> list[str]:
    """Differences between a checkpoint (its adapter tensors `expert::key` and state) and this run."""
    saved: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapters.items():
        expert, _, name = key.partition("::")
        saved.setdefault(expert, {})[name] = tensor
    out = []
    if set(saved) != set(networks):
        out.append(
            f"it trained experts {sorted(saved)}, this config trains {sorted(networks)} "
            "(model.model_kwargs.train_high_noise / train_low_noise)"
        )
    for expert in sorted(saved.keys() & networks.keys()):
        out += _expert_differences(expert, saved[expert], networks[expert].state_dict())
    before = state.get("optimizer_name")  # absent in checkpoints of older versions
    if before is not None and before != optimizer:
        out.append(f"it used train.optimizer {before!r}, this config asks for {optimizer!r}")
    elif not out and groups_now is not None:
        saved_groups = group_names(state.get("optimizer", {}))
        if sorted(saved_groups) != sorted(groups_now):
            out.append(
                f"its optimizer had parameter groups {sorted(saved_groups)}, this config builds "
                f"{sorted(groups_now)} (network.network_kwargs.loraplus_lr_ratio gives each expert's up "
                "matrices their own group: it was turned on or off)"
            )
    return out


def check_resumable(
    run_dir: Path,
    step: int,
    adapters: dict[str, torch.Tensor],
    state: dict[str, Any],
    networks: dict[str, Any],
    optimizer: str,
    groups_now: list[str] | None = None,
) -> None:
    problems = resume_mismatches(adapters, state, networks, optimizer, groups_now)
    if problems:
        raise ResumeMismatchError(
            f"cannot resume {run_dir} from its checkpoint at step {step}: "
            + "; ".join(problems)
            + ". A resume continues that run's adapters and optimizer, so these must match. To train with the "
            "new settings, give the job another `name` (a new run folder beside this one), or put the old "
            "settings back to continue this run"
        )
