"""Checkpoints: LoRA files for users plus the full training state for exact resume.

A checkpoint is complete or absent. Output files (one LoRA file per expert, the alpha-scheduler JSON) are
each written atomically first; the training-state folder is written under a temporary name, fsynced and
renamed last, so its presence marks the checkpoint complete. Resume reads only complete state folders.
Pruning deletes a step's output files first and its state folder last (renamed away, then deleted): a kill
in between leaves an old complete state that the next prune removes, never LoRA files nothing tracks.
Output files of steps older than the `keep` newest checkpoints that have no state folder are removed with
the other leftovers; only the exact names a save writes are ever deleted.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cadence.atomic import atomic_write_with, fsync_dir, remove_stale_temporaries

log = logging.getLogger(__name__)

STATE_DIR = "training_state"
_STEP_DIR = re.compile(r"^step_(\d{9})$")

OutputWriter = Callable[[Path], None]


class _NoMemoPickler(pickle.Pickler):
    """Pickles by value only. The standard pickler memoizes by object identity, so one state pickles to
    other bytes when an equal string or tuple is one shared object in a fresh run but two objects in a
    resumed one (loaded from the previous state): the bytes of `state.pt` would then depend on history, not
    content. Without the memo, equal states give byte-identical files (tensor storages are still shared
    through torch's own persistent ids; a training state holds no self-references)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = True


# what torch.save needs of a pickle module: its name and Pickler
_STABLE_PICKLE = types.SimpleNamespace(__name__="pickle", Pickler=_NoMemoPickler)


@dataclass(frozen=True)
class RunPaths:
    """Names of everything a run writes (the run-folder contract in docs/design.md)."""

    run_dir: Path
    name: str

    def lora_file(self, step: int, expert: str | None) -> Path:
        suffix = f"_{expert}" if expert else ""
        return self.run_dir / f"{self.name}_{step:09d}{suffix}.safetensors"

    def alpha_json(self, step: int) -> Path:
        return self.run_dir / f"{self.name}_{step:09d}_alpha_scheduler.json"

    def state_dir(self, step: int) -> Path:
        return self.run_dir / STATE_DIR / f"step_{step:09d}"

    @property
    def metrics(self) -> Path:
        return self.run_dir / f"metrics_{self.name}.jsonl"

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def log(self) -> Path:
        return self.run_dir / "log.txt"

    @property
    def tensorboard(self) -> Path:
        return self.run_dir / "tensorboard"

    @property
    def samples(self) -> Path:
        return self.run_dir / "samples"

    def step_outputs(self, step: int, labels: Sequence[str | None]) -> list[Path]:
        """The user-facing files a checkpoint writes (one LoRA file per expert label, the alpha JSON) that
        exist: exactly those names, so a user's own copy beside them (`..._backup.safetensors`) is never
        pruned with them."""
        names = [self.lora_file(step, label) for label in labels] + [self.alpha_json(step)]
        return [p for p in names if p.is_file()]

    def output_steps(self, labels: Sequence[str | None]) -> set[int]:
        """Steps that have user-facing checkpoint files in the run folder."""
        named = re.compile(rf"^{re.escape(self.name)}_(\d{{9}})(?:_|\.)")
        found = {
            int(m.group(1)) for p in self.run_dir.iterdir() if (m := named.match(p.name)) and p.is_file()
        }
        return {step for step in found if self.step_outputs(step, labels)}


# what every training state holds; a file without them is not one of ours (or an older, broken one)
REQUIRED_STATE_KEYS = frozenset({"step", "optimizer", "lr_scheduler", "router", "sampler", "randomness"})


class CheckpointReadError(ValueError):
    """A checkpoint could not be read for a reason outside the file (I/O, memory): retry, never set aside."""


class UnreadableCheckpoint(Exception):
    """A state folder whose files cannot be read back."""

    def __init__(self, folder: Path, problem: str) -> None:
        super().__init__(f"{folder}: {problem}")
        self.folder = folder
        self.problem = problem


class CheckpointManager:
    def __init__(self, paths: RunPaths, keep: int, labels: Sequence[str | None] = (None,)) -> None:
        """`labels`: the file-name label of each of the model's experts (None for single-expert models)."""
        self.paths = paths
        self.keep = keep
        self.labels = tuple(labels)
        self.protected: set[int] = set()  # steps pruning must keep (e.g. the health recommender's best)

    # ------------------------------------------------------------------------------------ discovery
    def complete_steps(self) -> list[int]:
        root = self.paths.run_dir / STATE_DIR
        if not root.is_dir():
            return []
        steps = []
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / "state.pt").is_file() and (child / "adapters.safetensors").is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def latest_step(self) -> int | None:
        steps = self.complete_steps()
        return steps[-1] if steps else None

    # ----------------------------------------------------------------------------------------- save
    def save(
        self,
        step: int,
        outputs: dict[Path, OutputWriter],
        adapters: dict[str, torch.Tensor],
        state: dict[str, Any],
    ) -> None:
        for target, writer in outputs.items():
            atomic_write_with(target, writer)
        final = self.paths.state_dir(step)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step:09d}_", dir=final.parent))
        try:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in adapters.items()}, tmp / "adapters.safetensors"
            )
            torch.save(state, tmp / "state.pt", pickle_module=_STABLE_PICKLE)
            for child in tmp.iterdir():
                with open(child, "rb+") as handle:
                    os.fsync(handle.fileno())
            fsync_dir(tmp)
            if final.exists():  # re-saving the same step (e.g. a resumed run that ends where it started)
                self._discard(final)
            tmp.rename(final)
            fsync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.prune()

    def load(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The adapters and state of a complete checkpoint; UnreadableCheckpoint when either file cannot be
        read back (truncated, overwritten with garbage, from another program), never a raw traceback."""
        folder = self.paths.state_dir(step)
        try:
            adapters = load_file(folder / "adapters.safetensors")
            state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        except (OSError, MemoryError) as exc:
            # the machine, not the file (an I/O error, a network mount away, no memory): setting the folder
            # aside would hide a good checkpoint for good; stop and let the user retry
            raise CheckpointReadError(
                f"cannot read the checkpoint {folder} ({type(exc).__name__}: {exc}); nothing was changed. "
                "Check the disk or mount (or free memory) and run again: training resumes from it"
            ) from exc
        except Exception as exc:  # unpickling garbage can raise nearly anything; each means "unusable"
            raise UnreadableCheckpoint(folder, f"{type(exc).__name__}: {exc}") from exc
        missing = sorted(REQUIRED_STATE_KEYS - set(state)) if isinstance(state, dict) else ["(not a mapping)"]
        if missing:
            raise UnreadableCheckpoint(folder, f"state.pt lacks {', '.join(missing)}")
        return adapters, state

    def set_aside(self, step: int) -> Path:
        """Move an unreadable state folder out of the resume path (kept for inspection, never pruned)."""
        folder = self.paths.state_dir(step)
        target = folder.with_name(f"unreadable_{folder.name}")
        suffix = 1
        while target.exists():  # an earlier one set aside for the same step is kept too
            suffix += 1
            target = folder.with_name(f"unreadable_{folder.name}_{suffix}")
        folder.rename(target)
        fsync_dir(folder.parent)
        return target

    # ---------------------------------------------------------------------------------------- prune
    def prune(self) -> list[int]:
        steps = self.complete_steps()
        removed = [step for step in steps[: max(0, len(steps) - self.keep)] if step not in self.protected]
        for step in removed:
            for path in self.paths.step_outputs(step, self.labels):
                path.unlink(missing_ok=True)
            self._discard(self.paths.state_dir(step))
            log.debug("pruned checkpoint step %d", step)
        self.clean_leftovers()
        return removed

    def _discard(self, folder: Path) -> None:
        trash = folder.with_name(f".trash_{folder.name}")
        if trash.exists():
            shutil.rmtree(trash)
        folder.rename(trash)
        fsync_dir(folder.parent)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_leftovers(self) -> None:
        """Remove what an interrupted save or prune left: temp files, temp and trash folders, and output
        files of steps pruning would have removed (older than the `keep` newest checkpoints, without a state
        folder). Files of a step newer than the latest checkpoint stay: the resumed run writes it again."""
        remove_stale_temporaries(self.paths.run_dir)
        remove_stale_temporaries(self.paths.samples)
        root = self.paths.run_dir / STATE_DIR
        for child in root.glob(".tmp_step_*"):
            shutil.rmtree(child, ignore_errors=True)
        for child in root.glob(".trash_*"):
            shutil.rmtree(child, ignore_errors=True)
        complete = self.complete_steps()
        if len(complete) < self.keep:
            return
        oldest_kept = complete[-self.keep]
        for step in sorted(self.paths.output_steps(self.labels) - set(complete) - self.protected):
            if step < oldest_kept:
                for path in self.paths.step_outputs(step, self.labels):
                    path.unlink(missing_ok=True)
                log.info(
                    "removed the LoRA files of step %d: older than the %d newest checkpoints "
                    "(save.max_step_saves_to_keep) and without a training state (a prune that a kill "
                    "interrupted, or a state folder deleted by hand)",
                    step,
                    self.keep,
                )
