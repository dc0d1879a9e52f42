"""`cadence ema-merge FILES... --output OUT [--beta B] [--beta2 B2] [--sigma-rel S]`: post-hoc EMA of LoRAs.

Starting from the earliest checkpoint, each later file i updates w <- beta_i * w + (1 - beta_i) * w_i, on
every stored tensor separately: LoRA's down and up, LoKr's w1 / w2 (or w2_a, w2_b), LoHa's four factors and
DoRA's magnitude (as musubi-tuner's lora_post_hoc_ema does for any network it saved). Factors, not deltas:
the average of the products is not a product of averages, but the average of the deltas has full rank, so no
file of the adapter's own type (and size) could hold it, and ComfyUI would need a full `.diff` matrix per
layer (a 14B expert's worth). Early in an EMA the factors move together, so the two are close in practice.
Type, rank and alpha are not averaged: they must be equal across the files (a different rank is named as
such, with both files).

* Order: by training step (metadata `step`, else `_{step:09d}` in the file name), never by argument order
  or mtime (musubi sorts by mtime, which a copy or a resume reorders).
* `--beta` (default 0.95): constant beta_i = beta.
* `--beta2`: beta_i runs linearly from beta (first update) to beta2 (last update), as in musubi.
* `--sigma-rel`: the EDM2 power-function EMA. sigma_rel is turned into gamma by solving
  sigma_rel^2 = (gamma+1) / ((gamma+2)^2 (gamma+3)) (largest root), whose per-step decay is
  beta_t = (1 - 1/t)^(gamma+1). A checkpoint stands for every step since the previous one, and the product of
  the per-step decays over (t_{i-1}, t_i] telescopes to beta_i = (t_{i-1} / t_i)^(gamma+1). That is what
  Cadence uses: it equals running the per-step power EMA over the steps with the weights held at each
  checkpoint. musubi instead plugs the *file index* into (1 - 1/t)^(gamma+1), which ignores the save spacing
  and gives the second file beta = 0 (the first file is discarded); with evenly spaced saves starting at the
  first save interval the two agree except for that first update.

High- and low-noise files are never mixed: the expert from metadata `expert` or the `_high_noise` /
`_low_noise` name suffix must agree. The output records inputs, steps, schedule and betas in its metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cadence.networks.formats import LAYOUTS, LoraFile, load_lora_file, save_lora_file
from cadence.networks.tensors import AdapterTensors
from cadence.tools.convert import file_dtype, refuse_overwriting_input

log = logging.getLogger(__name__)

DEFAULT_BETA = 0.95
_STEP_RE = re.compile(r"_(\d{9})(?=[_.]|$)")
_EXPERT_RE = re.compile(r"_(high_noise|low_noise)$")


@dataclass
class Checkpoint:
    path: Path
    lora: LoraFile
    step: int
    expert: str | None


def checkpoint_step(path: Path, metadata: dict[str, str]) -> int:
    raw = metadata.get("step")
    if raw is not None and str(raw).strip().lstrip("-").isdigit():
        return int(raw)
    match = _STEP_RE.search(path.stem)
    if match:
        return int(match.group(1))
    raise ValueError(
        f"{path}: cannot tell its training step (no 'step' in the metadata and no _NNNNNNNNN in the name); "
        "ema-merge orders files by step, so rename it like name_000001000.safetensors"
    )


def checkpoint_expert(path: Path, metadata: dict[str, str]) -> str | None:
    if metadata.get("expert") in ("high_noise", "low_noise"):
        return metadata["expert"]
    match = _EXPERT_RE.search(path.stem)
    return match.group(1) if match else None


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    lora = load_lora_file(path)
    return Checkpoint(
        path, lora, checkpoint_step(path, lora.metadata), checkpoint_expert(path, lora.metadata)
    )


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Largest real root of gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0 (EDM2, Algorithm 2)."""
    if not 0 < sigma_rel < 12**-0.5:
        raise ValueError(f"--sigma-rel must be in (0, {12**-0.5:.4f}), got {sigma_rel} (EDM2 uses 0.05-0.2)")
    t = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def ema_betas(
    steps: list[int], beta: float | None = None, beta2: float | None = None, sigma_rel: float | None = None
) -> list[float]:
    """beta_i for the updates by files 1..n-1 (steps sorted ascending)."""
    if sigma_rel is not None:
        if beta is not None or beta2 is not None:
            raise ValueError("--sigma-rel and --beta/--beta2 are mutually exclusive")
        gamma = sigma_rel_to_gamma(sigma_rel)
        return [(steps[i - 1] / steps[i]) ** (gamma + 1) for i in range(1, len(steps))]
    beta = DEFAULT_BETA if beta is None else beta
    for name, value in (("--beta", beta), ("--beta2", beta2)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    updates = len(steps) - 1
    if beta2 is not None and updates <= 1:
        raise ValueError(
            f"--beta2 sets the last of a linear beta schedule over the updates, and {len(steps)} files give "
            f"{updates} update(s): give --beta alone, or merge 3 or more checkpoints"
        )
    if beta2 is None:
        return [beta] * updates
    return [beta + (beta2 - beta) * i / (updates - 1) for i in range(updates)]


def _check_compatible(ckpts: list[Checkpoint]) -> None:
    known = [c for c in ckpts if c.expert is not None]
    for other in known[1:]:
        if other.expert != known[0].expert:
            raise ValueError(
                f"refusing to mix experts: {known[0].path.name} is {known[0].expert} but {other.path.name} is "
                f"{other.expert}; merge the high-noise and low-noise checkpoints separately"
            )
    first = ckpts[0]
    for other in ckpts[1:]:
        a, b = first.path.name, other.path.name
        if set(other.lora.modules) != set(first.lora.modules):
            diff = sorted(set(other.lora.modules) ^ set(first.lora.modules))[:3]
            raise ValueError(f"{a} and {b} adapt different modules (e.g. {diff})")
        for name, t in first.lora.modules.items():
            o = other.lora.modules[name]
            if o.algo != t.algo:
                raise ValueError(f"adapter type differs for {name}: {t.algo} in {a}, {o.algo} in {b}")
            if o.rank != t.rank:
                raise ValueError(
                    f"rank differs for {name}: {t.rank or 'full'} in {a}, {o.rank or 'full'} in {b}; an EMA "
                    "averages tensors of one shape, so merge checkpoints of one run (one network.linear)"
                )
            if set(o.tensors) != set(t.tensors):
                raise ValueError(f"{name}: {a} holds {sorted(t.tensors)}, {b} holds {sorted(o.tensors)}")
            if o.alpha != t.alpha:
                raise ValueError(
                    f"alpha differs for {name}: {t.alpha} in {a}, {o.alpha} in {b}; "
                    "EMA needs one alpha (was the alpha schedule still changing between these checkpoints?)"
                )
            for key, value in t.tensors.items():
                if o.tensors[key].shape != value.shape:
                    raise ValueError(f"{name}.{key}: shapes differ between {a} and {b}")


def ema_merge(
    checkpoints: list[Checkpoint],
    *,
    beta: float | None = None,
    beta2: float | None = None,
    sigma_rel: float | None = None,
) -> tuple[dict[str, AdapterTensors], list[Checkpoint], list[float]]:
    """Merge (fp32) in step order; returns (modules, checkpoints sorted by step, betas used)."""
    if len(checkpoints) < 2:
        raise ValueError("ema-merge needs at least two checkpoint files")
    ckpts = sorted(checkpoints, key=lambda c: c.step)
    for a, b in zip(ckpts, ckpts[1:], strict=False):
        if a.step == b.step:
            raise ValueError(f"{a.path.name} and {b.path.name} are both step {a.step}; cannot order them")
    _check_compatible(ckpts)
    betas = ema_betas([c.step for c in ckpts], beta, beta2, sigma_rel)
    merged = {
        n: AdapterTensors(t.algo, {k: v.to(torch.float32).clone() for k, v in t.tensors.items()}, t.alpha)
        for n, t in ckpts[0].lora.modules.items()
    }
    for b, ckpt in zip(betas, ckpts[1:], strict=True):
        for name, acc in merged.items():
            src = ckpt.lora.modules[name]
            for key, value in acc.tensors.items():
                value.mul_(b).add_(src.tensors[key].to(torch.float32), alpha=1.0 - b)
    return merged, ckpts, betas


def _schedule_metadata(
    ckpts: list[Checkpoint], betas: list[float], args: argparse.Namespace
) -> dict[str, str]:
    meta = dict(ckpts[-1].lora.metadata)
    schedule = "power" if args.sigma_rel is not None else "linear" if args.beta2 is not None else "constant"
    meta.update(
        step=str(ckpts[-1].step),
        ema_schedule=schedule,
        ema_inputs=json.dumps([c.path.name for c in ckpts]),
        ema_steps=json.dumps([c.step for c in ckpts]),
        ema_betas=json.dumps(betas),
    )
    if schedule == "power":
        meta.update(ema_sigma_rel=repr(args.sigma_rel), ema_gamma=repr(sigma_rel_to_gamma(args.sigma_rel)))
    else:
        meta["ema_beta"] = repr(DEFAULT_BETA if args.beta is None else args.beta)
        if args.beta2 is not None:
            meta["ema_beta2"] = repr(args.beta2)
    if ckpts[-1].expert:
        meta["expert"] = ckpts[-1].expert
    return meta


def ema_merge_command(args: argparse.Namespace) -> int:
    """CLI entry: merge args.files into args.output (atomic); returns 0, or 2 with a message on bad input."""
    try:
        refuse_overwriting_input(args.files, args.output, "--output")
        ckpts_in = [read_checkpoint(p) for p in args.files]
        modules, ckpts, betas = ema_merge(
            ckpts_in, beta=args.beta, beta2=args.beta2, sigma_rel=args.sigma_rel
        )
        last = ckpts[-1].lora
        layout = last.layout if last.layout in LAYOUTS else "comfyui"
        dtype = file_dtype(last)
        save_lora_file(args.output, modules, _schedule_metadata(ckpts, betas, args), layout, dtype)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    order = ", ".join(f"{c.path.name}@{c.step}" for c in ckpts)
    sys.stdout.write(f"merged {len(ckpts)} checkpoints ({order}) into {args.output}\n")
    return 0
