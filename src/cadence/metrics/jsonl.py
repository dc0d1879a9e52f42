"""Append-only JSONL metrics log, one line per optimizer step.

Lines are flushed after every write so a UI tailing the file sees them at once; `sync()` fsyncs at
checkpoints. On resume, lines after the checkpoint step are dropped by rewriting the file atomically, so
the log never holds steps that the restored state did not take.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from cadence.atomic import atomic_path


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line parses in strict readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete lines of a metrics file; a torn last line (kill -9 mid-write) is ignored."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class MetricsLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps({k: _clean(v) for k, v in row.items()}, separators=(",", ":"))
        self._handle.write(line + "\n")
        self._handle.flush()

    def sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self.sync()
            self._handle.close()

    def truncate_after(self, step: int) -> int:
        """Drop lines with step > `step` (atomic rewrite). Returns how many lines were dropped."""
        self._handle.close()
        rows = read_metrics(self.path)
        kept = [row for row in rows if int(row.get("step", 0)) <= step]
        dropped = len(rows) - len(kept)
        raw_lines = (
            self.path.read_text(encoding="utf-8").splitlines(keepends=True) if self.path.exists() else []
        )
        torn = bool(raw_lines) and not raw_lines[-1].endswith("\n")
        if dropped or torn:
            with atomic_path(self.path) as tmp:
                with open(tmp, "w", encoding="utf-8") as handle:
                    for row in kept:
                        handle.write(json.dumps(row, separators=(",", ":")) + "\n")
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        return dropped
