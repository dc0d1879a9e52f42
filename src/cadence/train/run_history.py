"""What an existing run folder holds, so a run never starts at step 0 over a previous run's files.

A run folder with LoRA files but no usable training state (the state folder deleted, or every state file
unreadable) would otherwise train from scratch and write over those files and their metrics. Training then
stops and says what is there and what to do. `cadence train --restart` starts over on purpose: the previous
run's files move into `{run_dir}/previous/{time}/` (caches stay: they are fingerprinted and reusable).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from cadence.atomic import fsync_dir
from cadence.train.checkpoint import STATE_DIR, RunPaths

log = logging.getLogger(__name__)

PREVIOUS_DIR = "previous"
# what a restart keeps in place: reusable caches and the lock the trainer holds
KEPT_ON_RESTART = frozenset({"latent_cache", "text_cache", ".lock", PREVIOUS_DIR})


# every expert label a run of any model writes files under (for checks made before the model is loaded)
ANY_LABEL: tuple[str | None, ...] = (None, "high_noise", "low_noise")
NO_STATE = "it has no training state (training_state/ was deleted or never written)"


class RunFolderNotResumable(ValueError):
    """The run folder holds a previous run's outputs that a fresh start would overwrite."""


def describe_outputs(paths: RunPaths, labels: Sequence[str | None]) -> str | None:
    """'LoRA files of 3 steps (100 ... 300) and 300 metrics lines', or None when there is nothing to lose."""
    steps = sorted(paths.output_steps(labels)) if paths.run_dir.is_dir() else []
    if not steps:
        return None
    span = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]} ... {steps[-1]}"
    parts = [f"LoRA files of {len(steps)} checkpoint(s) (step {span})"]
    if paths.metrics.is_file():
        with open(paths.metrics, "rb") as handle:
            lines = sum(1 for line in handle if line.strip())
        parts.append(f"{lines} metrics lines")
    return " and ".join(parts)


def refuse_fresh_start(paths: RunPaths, labels: Sequence[str | None], why: str) -> None:
    """Raise RunFolderNotResumable when starting at step 0 would overwrite a previous run's files."""
    outputs = describe_outputs(paths, labels)
    if outputs is None:
        return
    raise RunFolderNotResumable(
        f"{paths.run_dir} holds {outputs}, but {why}, so this run cannot continue them and starting at step 0 "
        f"would overwrite them. To start over, run `cadence train CONFIG --restart` (the old files move to "
        f"{paths.run_dir / PREVIOUS_DIR}/<time>/), or give the job another `name`. The LoRA files and metrics "
        "were left as they are"
    )


def move_previous_run(paths: RunPaths) -> Path | None:
    """`--restart`: move every output of the run folder into previous/<time>/; returns that folder (None when
    the folder was empty). Renames only, on one filesystem: a kill in between leaves every file in one of
    the two places."""
    if not paths.run_dir.is_dir():
        return None
    movable = [p for p in sorted(paths.run_dir.iterdir()) if p.name not in KEPT_ON_RESTART]
    if not movable:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = paths.run_dir / PREVIOUS_DIR / stamp
    suffix = 1
    while target.exists():
        suffix += 1
        target = paths.run_dir / PREVIOUS_DIR / f"{stamp}-{suffix}"
    target.mkdir(parents=True)
    for path in movable:
        os.replace(path, target / path.name)
    fsync_dir(target)
    fsync_dir(paths.run_dir)
    log.warning("--restart: the previous run's %d file(s)/folder(s) moved to %s", len(movable), target)
    return target


def unreadable_states(paths: RunPaths) -> list[Path]:
    root = paths.run_dir / STATE_DIR
    return sorted(root.glob("unreadable_step_*")) if root.is_dir() else []
