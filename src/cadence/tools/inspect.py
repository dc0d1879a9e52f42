"""`cadence inspect FILE [--json]`: what an adapter file holds.

Layout, adapter type (lora, lokr, loha; DoRA and its axis), LoKr's Kronecker factor sizes, module count,
rank(s) ("full" for a full-matrix LoKr), alpha(s), dtype(s), which kinds of layer are adapted (counted by the
module name inside its block, e.g. `attn1.to_q`, so a filter that silently missed the FFN shows up at once),
per-block mean |ΔW| (`cadence.networks.magnitude`: the module's weight change, e.g. up @ down * alpha / rank),
which Wan tools load the file at the trained strength (`cadence.networks.loaders`) and the metadata. A DoRA file read alone gives the low-rank part of ΔW: the magnitude rescaling needs the
base model's weights, so the report says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from cadence.models.registry import block_layout
from cadence.networks.formats import LoraFile, load_lora_file
from cadence.networks.loaders import shape_of, verdicts
from cadence.networks.magnitude import summarize
from cadence.networks.tensors import DORA_KEY, AdapterTensors


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _factors(mods: dict[str, AdapterTensors]) -> list[str]:
    """LoKr's Kronecker splits as 'axb (x) cxd' (w1 x w2 shapes), distinct, sorted."""
    out = set()
    for t in mods.values():
        if t.algo == "lokr":
            w1 = tuple(t.tensors["lokr_w1"].shape)
            w2 = t.tensors.get("lokr_w2")
            second = (
                tuple(w2.shape)
                if w2 is not None
                else (t.tensors["lokr_w2_a"].shape[0], t.tensors["lokr_w2_b"].shape[1])
            )
            out.add(f"{w1[0]}x{w1[1]} (x) {second[0]}x{second[1]}")
    return sorted(out)


def inspect_lora(path: str | Path) -> dict:
    """The report as a JSON-ready dict."""
    lora: LoraFile = load_lora_file(path)
    mods = lora.modules
    layout = block_layout(mods)  # the model family's blocks, in execution order (FLUX: double, then single)
    kinds = Counter(layout[name][1] if name in layout else name for name in mods)
    blocks = {position for position, _ in layout.values()}
    mag = summarize(mods)
    dora = sorted(
        {"output" if t.wd_on_output else "input" for t in mods.values() if t.dora_scale is not None}
    )
    ranks = {t.rank for t in mods.values()}
    return {
        "file": str(path),
        "layout": lora.layout,
        "type": lora.algos,
        "dora": dora,
        "lokr_factors": _factors(mods),
        "modules": len(mods),
        "blocks": sorted(blocks),
        "rank": sorted(r for r in ranks if r) + ["full"] * (None in ranks),
        "alpha": sorted({_num(t.alpha) for t in mods.values() if t.alpha is not None}),
        "dtype": sorted({str(d).removeprefix("torch.") for t in mods.values() for d in _weight_dtypes(t)}),
        "conv_modules": sum(1 for t in mods.values() if t.is_conv),
        "targets": dict(sorted(kinds.items())),
        "magnitude": {
            "mean": mag.mean,
            "per_block": {str(k): v for k, v in mag.per_block.items()},
            "scope": "low-rank part only (DoRA's magnitude rescaling needs the base weights)"
            if dora
            else "dW",
        },
        "loaders": {
            v.tool: {"loads": v.loads, "reason": v.reason, "fix": v.fix}
            for v in verdicts(shape_of(mods, lora.layout))
        },
        "metadata": dict(sorted(lora.metadata.items())),
    }


def _weight_dtypes(t: AdapterTensors) -> set:
    return {v.dtype for k, v in t.tensors.items() if k != DORA_KEY}


def format_report(report: dict) -> str:
    blocks = report["blocks"]
    span = f"{len(blocks)} blocks ({blocks[0]}-{blocks[-1]})" if blocks else "no blocks"
    lines = [
        f"file        {report['file']}",
        f"layout      {report['layout']}",
        f"type        {', '.join(report['type'])}"
        + (f" + DoRA (magnitude per {' and '.join(report['dora'])} axis)" if report["dora"] else ""),
        *(
            [f"factors     {', '.join(report['lokr_factors'])} (LoKr w1 (x) w2)"]
            if report["lokr_factors"]
            else []
        ),
        f"modules     {report['modules']} in {span}, {report['conv_modules']} conv",
        f"rank        {', '.join(map(str, report['rank']))}",
        f"alpha       {', '.join(map(str, report['alpha']))}",
        f"dtype       {', '.join(report['dtype'])}",
        f"mean |dW|   {report['magnitude']['mean']:.6g}"
        + (f"  ({report['magnitude']['scope']})" if report["dora"] else ""),
        "",
        "targets (modules per name inside a block)",
    ]
    lines += [f"  {name:<32} {count}" for name, count in report["targets"].items()]
    if report["magnitude"]["per_block"]:
        lines += ["", "per-block mean |dW|"]
        lines += [f"  block {k:>3}  {v:.6g}" for k, v in report["magnitude"]["per_block"].items()]
    lines += ["", "loads at the trained strength in"]
    for tool, v in report["loaders"].items():
        lines.append(f"  {tool:<13} {'yes' if v['loads'] else 'no: ' + v['reason'] + '; ' + v['fix']}")
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
