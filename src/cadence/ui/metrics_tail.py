"""Incremental reads of append-only files (metrics JSONL, logs): only the bytes after a client's offset.

The client keeps the byte offset we return and sends it back on the next poll, so a long run's metrics
file is never re-read. A torn last line (the trainer is mid-write) is left for the next poll: the returned
offset stops after the last complete line. A file that shrank (a new run replaced it) restarts at 0 and
says `reset`. Large reads are downsampled per expert (so alternating experts both survive), always keeping
eval points, phase changes, lines with health warnings and lines carrying sample motion.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

MAX_CHUNK = 8 * 1024 * 1024  # bytes per poll; the client polls again at once when `more` is set
MAX_POINTS = 2000  # per expert per response before downsampling


@dataclass
class Chunk:
    records: list[dict] = field(default_factory=list)
    offset: int = 0
    more: bool = False
    reset: bool = False
    stride: int = 1

    def to_dict(self) -> dict:
        return {
            "records": self.records,
            "offset": self.offset,
            "more": self.more,
            "reset": self.reset,
            "stride": self.stride,
        }


def read_new_bytes(path: Path, offset: int, max_bytes: int = MAX_CHUNK) -> tuple[bytes, int, bool, bool]:
    """(complete-lines bytes, new offset, more, reset) reading only from `offset`."""
    reset = False
    try:
        size = path.stat().st_size
    except OSError:
        return b"", 0, False, offset != 0
    if offset < 0 or offset > size:
        offset, reset = 0, True
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(max_bytes)
    end = data.rfind(b"\n")
    if end < 0:
        return b"", offset, False, reset
    complete = data[: end + 1]
    new_offset = offset + len(complete)
    return complete, new_offset, new_offset < size and len(data) == max_bytes, reset


def parse_lines(data: bytes) -> list[dict]:
    records = []
    for line in data.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a corrupt line (e.g. after a crash) must not hide the rest
        if isinstance(obj, dict):
            records.append(obj)
    return records


def _keep_always(rec: dict, prev_phase: dict[str, object]) -> bool:
    expert = str(rec.get("expert"))
    changed = "phase" in rec and prev_phase.get(expert, rec.get("phase")) != rec.get("phase")
    if "phase" in rec:
        prev_phase[expert] = rec.get("phase")
    has_eval = any(k.startswith("eval_loss") and rec.get(k) is not None for k in rec)
    return changed or has_eval or bool(rec.get("health_warnings")) or "sample_motion_step" in rec


def downsample(records: list[dict], max_points: int = MAX_POINTS) -> tuple[list[dict], int]:
    """Every k-th record of each expert (k so that each expert keeps about `max_points`)."""
    counts: dict[str, int] = {}
    for rec in records:
        counts[str(rec.get("expert"))] = counts.get(str(rec.get("expert")), 0) + 1
    largest = max(counts.values(), default=0)
    stride = max(1, math.ceil(largest / max_points))
    if stride == 1:
        return records, 1
    seen: dict[str, int] = {}
    prev_phase: dict[str, object] = {}
    kept = []
    for i, rec in enumerate(records):
        expert = str(rec.get("expert"))
        n = seen.get(expert, 0)
        seen[expert] = n + 1
        if n % stride == 0 or i == len(records) - 1 or _keep_always(rec, prev_phase):
            kept.append(rec)
        elif "phase" in rec:
            prev_phase[expert] = rec.get("phase")
    return kept, stride


def read_metrics(path: Path, offset: int, max_points: int = MAX_POINTS, max_bytes: int = MAX_CHUNK) -> Chunk:
    data, new_offset, more, reset = read_new_bytes(path, offset, max_bytes)
    records, stride = downsample(parse_lines(data), max_points)
    return Chunk(records=records, offset=new_offset, more=more, reset=reset, stride=stride)


def read_text_tail(
    path: Path, offset: int | None, initial_tail: int = 64 * 1024, max_bytes: int = 1024 * 1024
) -> tuple[str, int]:
    """New text after `offset` (or the last `initial_tail` bytes when offset is None) and the new offset."""
    try:
        size = path.stat().st_size
    except OSError:
        return "", 0
    if offset is None or offset > size or offset < 0:
        offset = max(0, size - initial_tail)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(max_bytes)
    return data.decode("utf-8", errors="replace"), offset + len(data)
