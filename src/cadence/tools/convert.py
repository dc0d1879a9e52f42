"""`cadence convert IN OUT --to comfyui|diffusers`: rewrite a LoRA file in the other layout.

Tensors are copied bit for bit in their stored dtype and every module keeps its alpha (as the ComfyUI
`.alpha` tensor, or in the diffusers `lora_adapter_metadata` rank/alpha patterns), so the converted file has
exactly the effect of the original in the tool that reads it. Metadata is carried over, with
`converted_from` naming the source file and its layout. Kohya/musubi files are accepted as input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from cadence.networks.formats import LAYOUTS, LoraFile, load_lora_file, save_lora_file

log = logging.getLogger(__name__)


def file_dtype(lora: LoraFile) -> torch.dtype:
    """The one dtype of the file's weights; mixed dtypes are widened to fp32 (lossless)."""
    dtypes = {t.down.dtype for t in lora.modules.values()} | {t.up.dtype for t in lora.modules.values()}
    if len(dtypes) == 1:
        return dtypes.pop()
    log.warning("weights have mixed dtypes %s; writing float32", sorted(str(d) for d in dtypes))
    return torch.float32


def convert_lora_file(src: str | Path, dst: str | Path, to: str) -> LoraFile:
    """Convert `src` to layout `to` at `dst` (atomic); returns the source file as read."""
    if to not in LAYOUTS:
        raise ValueError(f"--to must be one of {', '.join(LAYOUTS)}, got {to!r}")
    lora = load_lora_file(src)
    metadata = dict(lora.metadata)
    metadata["converted_from"] = f"{Path(src).name} ({lora.layout})"
    save_lora_file(dst, lora.modules, metadata, to, file_dtype(lora))
    return lora


def convert_command(args: argparse.Namespace) -> int:
    try:
        lora = convert_lora_file(args.input, args.output, args.to)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(
        f"{args.input} ({lora.layout}, {len(lora.modules)} modules) -> {args.output} ({args.to})\n"
    )
    return 0
