"""TensorBoard as a tracking sink: the numeric fields of every `every`-th metrics row, events as text.

Writes `{run_dir}/tensorboard/`. On resume, events after the checkpoint step are purged (`purge_step`), so
a resumed run does not draw two curves over the steps it replays.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TensorBoardLog:
    name = "tensorboard"

    def __init__(self, folder: Path, every: int = 1) -> None:
        self.folder = folder
        self.every = every
        self._writer: Any = None

    def open(self, run: Any, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge_step = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(log_dir=str(self.folder), purge_step=purge_step)

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        if self._writer is None:
            return
        thinned = step % self.every != 0  # sample motion comes once per sampled step: never thinned away
        for key, value in row.items():
            if thinned and not key.startswith("sample_motion_"):
                continue
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(float(value)):
                self._writer.add_scalar(key, float(value), step)

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        if self._writer is not None and kind != "sample":  # samples are files in samples/, not repeated here
            self._writer.add_text(
                f"events/{kind}", str(payload.get("message", "")), int(payload.get("step") or 0)
            )

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def state_dict(self) -> dict[str, Any]:
        return {}
