"""`cadence inspect FILE [--json]`: what a LoRA file holds.

Layout, module count, rank(s), alpha(s), dtype(s), which kinds of layer are adapted (counted by the module
name inside its block, e.g. `attn1.to_q`, so a filter that silently missed the FFN shows up at once),
per-block mean |ΔW| (`cadence.networks.magnitude`, ΔW = up @ down * alpha / rank) and the metadata.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from cadence.networks.formats import LoraFile, load_lora_file
from cadence.networks.magnitude import summarize

_BLOCK_PREFIX = re.compile(r"^blocks\.\d+\.")


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def inspect_lora(path: str | Path) -> dict:
    """The report as a JSON-ready dict."""
    lora: LoraFile = load_lora_file(path)
    mods = lora.modules
    kinds = Counter(_BLOCK_PREFIX.sub("", name) for name in mods)
    blocks = {int(n.split(".")[1]) for n in mods if _BLOCK_PREFIX.match(n)}
    mag = summarize(mods)
    return {
        "file": str(path),
        "layout": lora.layout,
        "modules": len(mods),
        "blocks": sorted(blocks),
        "rank": sorted({t.rank for t in mods.values()}),
        "alpha": sorted({_num(t.alpha) for t in mods.values()}),
        "dtype": sorted({str(t.down.dtype).removeprefix("torch.") for t in mods.values()}),
        "conv_modules": sum(1 for t in mods.values() if t.down.dim() > 2),
        "targets": dict(sorted(kinds.items())),
        "magnitude": {"mean": mag.mean, "per_block": {str(k): v for k, v in mag.per_block.items()}},
        "metadata": dict(sorted(lora.metadata.items())),
    }


def format_report(report: dict) -> str:
    blocks = report["blocks"]
    span = f"{len(blocks)} blocks ({blocks[0]}-{blocks[-1]})" if blocks else "no blocks"
    lines = [
        f"file        {report['file']}",
        f"layout      {report['layout']}",
        f"modules     {report['modules']} in {span}, {report['conv_modules']} conv",
        f"rank        {', '.join(map(str, report['rank']))}",
        f"alpha       {', '.join(map(str, report['alpha']))}",
        f"dtype       {', '.join(report['dtype'])}",
        f"mean |dW|   {report['magnitude']['mean']:.6g}",
        "",
        "targets (modules per name inside a block)",
    ]
    lines += [f"  {name:<32} {count}" for name, count in report["targets"].items()]
    if report["magnitude"]["per_block"]:
        lines += ["", "per-block mean |dW|"]
        lines += [f"  block {k:>3}  {v:.6g}" for k, v in report["magnitude"]["per_block"].items()]
    if report["metadata"]:
        lines += ["", "metadata"]
        width = max(len(k) for k in report["metadata"])
        lines += [f"  {k:<{width}}  {v}" for k, v in report["metadata"].items()]
    return "\n".join(lines) + "\n"


def inspect_command(args: argparse.Namespace) -> int:
    try:
        report = inspect_lora(args.file)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else format_report(report))
    return 0
