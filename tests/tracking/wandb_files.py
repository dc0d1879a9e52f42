"""Read the records of an offline W&B run (`run-<id>.wandb`) as the `wandb` package wrote them.

wandb 0.31 ships no Python reader of its transaction log, so this follows the format its writer uses (the
LevelDB log format): a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
with a CRC-32 of its type byte and data, a little-endian length and a type (full / first / middle / last).
Every record is a `wandb_internal_pb2.Record` protobuf, decoded with the package's own classes.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    at, parts = HEADER, []
    while at + HEADER <= len(data):
        left = BLOCK - at % BLOCK
        if left < HEADER:  # block tail padding
            at += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[at : at + HEADER])
        if (length, kind) == (0, 0):
            break
        chunk = data[at + HEADER : at + HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum, f"bad CRC at {at}"
        at += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = [chunk]
        elif kind == MIDDLE:
            parts.append(chunk)
        elif kind == LAST:
            yield b"".join([*parts, chunk])


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for data in _chunks(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(data)
        out.append(record)
    return out


def offline_runs(run_dir: Path) -> list[Path]:
    """The run's offline W&B transaction logs, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def history(records_: list[Any]) -> list[dict[str, Any]]:
    """One dict per logged step: nested keys joined with '.', values decoded from JSON."""
    rows = []
    for record in records_:
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = ".".join(item.nested_key) if item.nested_key else item.key
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def of_type(records_: list[Any], kind: str) -> list[Any]:
    return [getattr(r, kind) for r in records_ if r.WhichOneof("record_type") == kind]
