"""Self-contained HTML for `cadence analyze`: tables plus matplotlib plots embedded as base64 PNGs.

It renders the plain dict of `AnalysisReport.to_dict()` so it has no import cycle with analyze.py. Plots use
matplotlib's object API with the Agg canvas (no pyplot, no global backend switch) and the page loads no
external assets, so it opens from a copied run folder or an air-gapped machine. Markers and tick labels
thin out on long runs (thousands of checkpoints), so the page renders in seconds (bench/analysis_bench.py).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_TICKS = 24  # labelled ticks per heatmap axis
MAX_MARKERS = 200  # points per line drawn with markers (more: a plain line)
COLORS = {"high_noise": "#c0392b", "low_noise": "#2471a3", "main": "#1e8449"}
_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;
margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f2f2f2}td.l{text-align:left}img{max-width:100%;margin:6px 0}.warn{color:#9a3412}"""


def _png(draw: Callable[[Figure], None], size: tuple[float, float] = (8, 3.6)) -> str:
    fig = Figure(figsize=size, dpi=90)
    FigureCanvasAgg(fig)
    draw(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(data: dict[str, Any], expert: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for c in data["checkpoints"]:
        value = c["experts"].get(expert, {}).get(key)
        if value is not None:
            xs.append(c["step"])
            ys.append(value)
    return xs, ys


def _per_expert(
    data: dict[str, Any], key: str, title: str, scale: float = 1.0, line: float | None = None
) -> Callable[[Figure], None]:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for expert in data["experts"]:
            xs, ys = _series(data, expert, key)
            ax.plot(xs, [y * scale for y in ys], _line(len(xs)), color=COLORS.get(expert), label=expert)
        if line is not None:
            ax.axhline(line, color="#888", linestyle="--", label=f"threshold {line:g}")
        _finish(ax, title)

    return draw


def _ratios(data: dict[str, Any]) -> Callable[[Figure], None]:
    th = data["thresholds"]

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for key, label, color in (
            ("weight_ratio", "|ΔW| high/low", "#6c3483"),
            ("lr_ratio", "LR high/low", "#ca6f1e"),
        ):
            pts = [(c["step"], c[key]) for c in data["checkpoints"] if c[key] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), _line(len(pts)), color=color, label=label)
        for rule, style in (
            ("weight_ratio_low", "--"),
            ("weight_ratio_high", "--"),
            ("lr_ratio_low", ":"),
            ("lr_ratio_high", ":"),
        ):
            if rule in th:
                ax.axhline(th[rule], color="#888", linestyle=style, label=f"{rule} {th[rule]:g}")
        _finish(ax, "High/low ratios")

    return draw


def _losses(data: dict[str, Any]) -> Callable[[Figure], None]:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for expert in data["experts"]:
            pts = [
                (c["step"], e["loss_mean"], e["loss_std"] or 0.0)
                for c in data["checkpoints"]
                if (e := c["experts"].get(expert)) and e.get("loss_mean") is not None
            ]
            if pts:
                xs, ys, err = zip(*pts, strict=True)
                color = COLORS.get(expert)
                if len(xs) <= MAX_MARKERS:
                    ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, color=color, label=f"{expert} loss")
                else:  # a band instead of thousands of error bars
                    ax.plot(xs, ys, "-", color=color, label=f"{expert} loss")
                    low = [y - e for y, e in zip(ys, err, strict=True)]
                    high = [y + e for y, e in zip(ys, err, strict=True)]
                    ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)
        evals = [(c["step"], c["eval_loss"]) for c in data["checkpoints"] if c["eval_loss"] is not None]
        if evals:
            ax.plot(
                *zip(*evals, strict=True),
                "s--" if len(evals) <= MAX_MARKERS else "--",
                color="#111",
                label="eval loss",
            )
        _finish(ax, "Loss mean ± std over each interval")

    return draw


def _motion(data: dict[str, Any]) -> Callable[[Figure], None]:
    """Sample motion per sampled step (coarse, fine), the data's reference and the motion rules' lines."""
    th, reference = data["thresholds"], data["motion_reference"]

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        sampled = data["sample_motion"]
        for key, color in (("coarse", "#c0392b"), ("fine", "#2471a3"), ("mean", "#7d7d7d")):
            ax.plot(
                [m["step"] for m in sampled],
                [m[key] for m in sampled],
                _line(len(sampled)),
                color=color,
                label=f"{key} motion",
            )
        if reference is not None:
            level = reference["coarse"]  # the report dict holds the MotionStats fields themselves
            ax.axhline(level, color="#1e8449", linestyle="--", label=f"training clips (coarse) {level:.4f}")
            if "motion_excess" in th:
                ax.axhline(level * th["motion_excess"], color="#9a3412", linestyle=":", label="motion_excess")
        for w in data["warnings"]:
            if w["rule"] in ("motion_tame", "motion_excess"):
                ax.axvline(w["step"], color="#9a3412", alpha=0.5, linewidth=1)
        _finish(ax, "Sample motion (frame diagonals per second; vertical lines: motion warnings)")

    return draw


def _blocks(data: dict[str, Any], expert: str) -> Callable[[Figure], None]:
    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        cps = [c for c in data["checkpoints"] if expert in c["experts"]]
        blocks = sorted({int(b) for c in cps for b in c["experts"][expert]["per_block"]})
        grid = [[c["experts"][expert]["per_block"].get(str(b), float("nan")) for c in cps] for b in blocks]
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
        # at most ~MAX_TICKS labels per axis: thousands of checkpoints made matplotlib lay out thousands
        xs, ys = _thinned(len(cps)), _thinned(len(blocks))
        ax.set_xticks(xs, [str(cps[i]["step"]) for i in xs], rotation=45, fontsize=7)
        ax.set_yticks(ys, [str(blocks[i]) for i in ys], fontsize=7)
        ax.set_xlabel("step")
        ax.set_ylabel("block")
        ax.set_title(f"{expert}: mean |ΔW| per block")
        fig.colorbar(image, ax=ax)

    return draw


def _line(points: int) -> str:
    return "o-" if points <= MAX_MARKERS else "-"


def _thinned(count: int) -> list[int]:
    """Positions 0..count-1, every k-th one so that at most MAX_TICKS remain (the last one included)."""
    every = max(1, -(-count // MAX_TICKS))
    ticks = list(range(0, count, every))
    if count and ticks[-1] != count - 1 and every > 1:
        ticks[-1] = count - 1
    return ticks


def _finish(ax: Axes, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _plots(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(what the plot shows, PNG data URI) for each plot."""
    th = data["thresholds"]
    images = [
        ("mean |ΔW| per expert", _png(_per_expert(data, "magnitude", "Mean |ΔW| per expert"))),
        (
            "growth since the previous checkpoint",
            _png(_per_expert(data, "growth", "Growth since previous checkpoint (%)", scale=100.0)),
        ),
    ]
    if any(c["weight_ratio"] is not None or c["lr_ratio"] is not None for c in data["checkpoints"]):
        images.append(("high/low ratios", _png(_ratios(data))))
    if data.get("sample_motion"):
        images.append(("sample motion per sampled step", _png(_motion(data))))
    images.append(("loss mean and std per interval", _png(_losses(data))))
    images.append(("mean LR per interval", _png(_per_expert(data, "lr", "Mean LR over each interval"))))
    images.append(
        (
            "gradient stability",
            _png(_per_expert(data, "grad_stability", "Gradient stability", line=th.get("gradient_unstable"))),
        )
    )
    for expert in data["experts"]:
        if any(c["experts"].get(expert, {}).get("per_block") for c in data["checkpoints"]):
            images.append((f"{expert}: mean |ΔW| per block", _png(_blocks(data, expert), size=(8, 4.5))))
    return images


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return "<td>-</td>"
    return f"<td>{html.escape(format(value, spec) if spec else str(value))}</td>"


def _table(data: dict[str, Any]) -> str:
    rows = [
        "<tr><th>step</th><th>expert</th><th>|ΔW| mean</th><th>growth</th><th>W ratio</th><th>LR</th>"
        "<th>LR ratio</th><th>loss mean</th><th>loss std</th><th>n</th><th>grad stab</th><th>eval</th>"
        "<th>motion (coarse)</th><th>fine</th><th>of data</th><th>of peak</th></tr>"
    ]
    for c in data["checkpoints"]:
        m = c.get("motion") or {}
        motion = (
            f"{_cell(m.get('coarse'), '.4f')}{_cell(m.get('fine'), '.4f')}"
            f"{_cell(m.get('of_reference'), '.0%')}{_cell(m.get('of_peak'), '.0%')}"
        )
        for expert, e in c["experts"].items():
            rows.append(
                f"<tr>{_cell(c['step'])}<td class=l>{html.escape(expert)}</td>{_cell(e['magnitude'], '.6f')}"
                f"{_cell(e['growth'], '+.1%')}{_cell(c['weight_ratio'], '.2f')}{_cell(e['lr'], '.2e')}"
                f"{_cell(c['lr_ratio'], '.2f')}{_cell(e['loss_mean'], '.4f')}{_cell(e['loss_std'], '.4f')}"
                f"{_cell(e['loss_count'])}{_cell(e['grad_stability'], '.3f')}"
                f"{_cell(e['eval_loss'] if e['eval_loss'] is not None else c['eval_loss'], '.4f')}"
                f"{motion}</tr>"
            )
            motion = "<td></td>" * 4  # once per checkpoint
    return "<table>" + "".join(rows) + "</table>"


def render_html(data: dict[str, Any]) -> str:
    """The whole page as one string (write it with cadence.atomic)."""
    esc = html.escape
    warnings = (
        "".join(
            f"<tr><td>{w['step']}</td><td class=l>{esc(w['rule'])}</td><td class=l>{esc(w['expert'] or '')}</td>"
            f"<td class='l warn'>{esc(w['message'])}</td></tr>"
            for w in data["warnings"]
        )
        or "<tr><td class=l colspan=4>none</td></tr>"
    )
    recs = "".join(
        f"<li><b>step {r['step']}</b><ul>{''.join(f'<li>{esc(x)}</li>' for x in r['reasons'])}</ul></li>"
        for r in data["recommendations"]
    )
    notes = "".join(f"<p>note: {esc(n)}</p>" for n in data["notes"])
    thresholds = ", ".join(f"{esc(k)} = {v:g}" for k, v in data["thresholds"].items()) or "none"
    plots = "".join(f'<img alt="{esc(alt)}" src="{src}">' for alt, src in _plots(data))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cadence analyze: {esc(data['name'])}</title>"
        f"<style>{_CSS}</style></head><body><h1>Run {esc(data['name'])}</h1>"
        f"<p>{esc(data['run_dir'])} — preset <b>{esc(data['preset'] or 'none')}</b>; thresholds: {thresholds}</p>"
        f"{notes}<h2>Recommended checkpoints</h2><ul>{recs}</ul><h2>Warnings</h2>"
        f"<table><tr><th>step</th><th>rule</th><th>expert</th><th>message</th></tr>{warnings}</table>"
        f"<h2>Checkpoints</h2>{_table(data)}<h2>Plots</h2>{plots}</body></html>\n"
    )
