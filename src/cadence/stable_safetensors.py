"""safetensors files whose bytes depend only on their content.

`safetensors` stores the metadata (`__metadata__`) through a hash map, so the same tensors and metadata
come out with the keys in another order from run to run: two identical runs then write files with other
sha256 sums, and "bit-exact resume" cannot be checked with `sha256sum`. Here the header is rewritten with
the metadata keys sorted (tensor entries and data bytes untouched; the header stays padded to 8 bytes, as
the format asks), so equal content gives equal bytes. Readers see an ordinary safetensors file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save

from cadence.atomic import atomic_write_bytes


def stable_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The file's bytes, with the metadata keys in sorted order."""
    data = save(dict(tensors), metadata=dict(metadata) if metadata else None)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def save_stable(
    tensors: Mapping[str, torch.Tensor], path: Path | str, metadata: Mapping[str, str] | None = None
) -> None:
    """Write `tensors` to `path` atomically with stable bytes (see the module docstring)."""
    atomic_write_bytes(path, stable_bytes(tensors, metadata))
