"""`cadence convert IN OUT --to comfyui|diffusers|kohya`: rewrite an adapter file in another layout.

Tensors are copied bit for bit in their stored dtype and every module keeps its alpha (as the ComfyUI
`.alpha` tensor, or in the diffusers `lora_adapter_metadata` rank/alpha patterns), so the converted file has
exactly the effect of the original in the tool that reads it. Metadata is carried over, with
`converted_from` naming the source file and its layout. Kohya/musubi files are accepted as input. A
conversion that has no target layout (LoKr/LoHa, or input-axis DoRA, to diffusers) is refused with the
reason; OUT may not be IN (also through a link or another spelling of the path). The report ends with the
tools that load OUT at the trained strength (`cadence.networks.loaders`) and what to do for the others.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from cadence.networks.formats import LAYOUTS, LoraFile, load_lora_file, save_lora_file
from cadence.networks.loaders import shape_of, summary_lines
from cadence.networks.tensors import DORA_KEY

log = logging.getLogger(__name__)


def file_dtype(lora: LoraFile) -> torch.dtype:
    """The one dtype of the file's weights (DoRA magnitudes, always fp32, aside); mixed dtypes are widened to
    fp32 (lossless)."""
    dtypes = {v.dtype for t in lora.modules.values() for k, v in t.tensors.items() if k != DORA_KEY}
    if len(dtypes) == 1:
        return dtypes.pop()
    log.warning("weights have mixed dtypes %s; writing float32", sorted(str(d) for d in dtypes))
    return torch.float32


def refuse_overwriting_input(inputs: list[str | Path], output: str | Path, what: str = "OUT") -> None:
    """An output that is one of the inputs (same path, a symlink to it, or a hard link) is an error."""
    out = Path(output)
    for src in inputs:
        same = Path(src).resolve() == out.resolve()
        if not same and out.exists() and Path(src).exists():
            same = os.path.samefile(src, out)
        if same:
            raise ValueError(
                f"{what} {output} is one of the input files ({src}); writing it would replace the input it is "
                "read from, so write to a new file"
            )


def convert_lora_file(src: str | Path, dst: str | Path, to: str) -> LoraFile:
    """Convert `src` to layout `to` at `dst` (atomic); returns the source file as read."""
    if to not in LAYOUTS:
        raise ValueError(f"--to must be one of {', '.join(LAYOUTS)}, got {to!r}")
    refuse_overwriting_input([src], dst)
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
    for line in summary_lines(shape_of(lora.modules, args.to), what=Path(args.output).name, plural=False):
        sys.stdout.write(f"  {line}\n")
    return 0
