"""`cadence analyze RUN_DIR`: weight, LR and loss health of a run, per expert and per checkpoint.

Reads the run folder (LoRA checkpoints, metrics JSONL, config.yaml), measures each checkpoint's mean |ΔW|,
runs the health rules of the chosen preset and recommends checkpoints to keep. Prints a table (or JSON
with --json) and always writes `analysis.json` and a self-contained `analysis.html` into the run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cadence.atomic import atomic_write_text
from cadence.data.motion_reference import MotionReference, read_motion_reference
from cadence.networks.formats import load_lora_file
from cadence.networks.magnitude import MagnitudeSummary, summarize
from cadence.tools.growth_span import GrowthSpan, growth_span
from cadence.tools.health import (
    HealthConfig,
    HealthWarning,
    Recommendation,
    RunSeries,
    active_thresholds,
    build_series,
    evaluate,
    recommend,
)
from cadence.tools.health_series import MotionPoint
from cadence.tools.report_html import render_html
from cadence.tools.run_folder import RunData, load_run
from cadence.tools.sample_motion import read_sample_motion

log = logging.getLogger(__name__)
PRESET_CHOICES = ("motion", "character", "none")


@dataclass
class AnalysisReport:
    run_dir: str
    name: str
    preset: str | None
    experts: list[str]
    thresholds: dict[str, float]
    series: RunSeries
    warnings: list[HealthWarning]
    recommendations: list[Recommendation]
    files: dict[int, dict[str, str]] = field(default_factory=dict)  # step -> expert -> file name
    notes: list[str] = field(default_factory=list)
    span: GrowthSpan | None = None  # --since/--until

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (no NaN: missing values are null)."""
        checkpoints = []
        for p in self.series.points:
            experts = {}
            for name, e in p.experts.items():
                experts[name] = {
                    "magnitude": e.magnitude,
                    "growth": e.growth,
                    "total_steps": e.total_steps,
                    **asdict(e.stats),
                    "per_block": {str(k): v for k, v in e.per_block.items()},
                    "file": self.files.get(p.step, {}).get(name),
                }
            checkpoints.append(
                {
                    "step": p.step,
                    "weight_ratio": p.weight_ratio,
                    "lr_ratio": p.lr_ratio,
                    "eval_loss": p.eval_loss,
                    "balanced": self.series.balanced(len(checkpoints)),
                    "motion": _motion_dict(p.motion),
                    "experts": experts,
                }
            )
        reference = self.series.reference
        return {
            "run_dir": self.run_dir,
            "name": self.name,
            "preset": self.preset,
            "experts": self.experts,
            "thresholds": self.thresholds,
            "checkpoints": checkpoints,
            "warnings": [asdict(w) for w in self.warnings],
            "recommendations": [asdict(r) for r in self.recommendations],
            "notes": self.notes,
            "span": self.span.to_dict() if self.span else None,
            "motion_reference": reference.to_dict() if reference else None,
            "sample_motion": [
                {"step": m.step, **m.stats.to_dict(), "samples": len(m.samples)}
                for m in self.series.sampled.values()
            ],
        }


def _motion_dict(motion: MotionPoint | None) -> dict[str, Any] | None:
    if motion is None:
        return None
    return {
        **motion.stats.to_dict(),
        "samples": motion.samples,
        "of_reference": motion.of_reference,
        "of_peak": motion.of_peak,
    }


def health_config(
    run: RunData, preset: str | None, overrides: dict[str, float | None] | None
) -> HealthConfig:
    """train.health from config.yaml, then the caller's preset ("none" = no preset) and threshold overrides."""
    raw = dict(((run.config or {}).get("train") or {}).get("health") or {})
    if preset is not None:
        raw["preset"] = None if preset == "none" else preset
    raw["thresholds"] = {**(raw.get("thresholds") or {}), **(overrides or {})}
    try:
        return _validate_health(raw, run)
    except ValueError:
        if not raw.get("stop_on"):
            raise
    raw["stop_on"] = []  # it named rules the overriding preset switched off; analysis does not stop anything
    return _validate_health(raw, run)


def _validate_health(raw: dict[str, Any], run: RunData) -> HealthConfig:
    try:
        return HealthConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(
            f"{run.run_dir / 'config.yaml'}: train.health (with command-line overrides) is invalid: {exc}"
        ) from exc


def measure(run: RunData, skipped: list[str] | None = None) -> dict[int, dict[str, MagnitudeSummary]]:
    """Mean |ΔW| summaries of every checkpoint file, one file at a time (bounded memory). An unreadable file
    (truncated copy, foreign file) is left out with a warning, appended to `skipped`; none readable is an
    error."""
    out: dict[int, dict[str, MagnitudeSummary]] = {}
    for expert in run.experts:
        for step, path in run.checkpoints[expert].items():
            try:
                summary = summarize(load_lora_file(path).modules)
            except ValueError as exc:
                log.warning("skipping %s", exc)
                if skipped is not None:
                    skipped.append(str(exc))
                continue
            out.setdefault(step, {})[expert] = summary
    if not out:
        raise ValueError(f"no readable LoRA checkpoint in {run.run_dir}")
    return out


# health rules that read the high/low expert pair (|ΔW| and LR ratios, per-expert growth)
EXPERT_PAIR_RULES = ("weight_ratio", "low_noise_", "high_noise_", "lr_ratio")


def analyze_run(
    run_dir: Path | str, preset: str | None = None, overrides: dict[str, float | None] | None = None
) -> AnalysisReport:
    """Measure, check and recommend. preset None = take train.health.preset from config.yaml (or none)."""
    run = load_run(run_dir)
    cfg = health_config(run, preset, overrides)
    skipped: list[str] = []
    motion, remeasured = read_sample_motion(run.run_dir)
    reference = read_motion_reference(run.run_dir)
    series = build_series(measure(run, skipped), run.metrics, motion, reference.stats if reference else None)
    warnings = evaluate(series, cfg)
    notes = motion_notes(series, reference, remeasured)
    if cfg.preset is None and {"high_noise", "low_noise"} <= set(run.experts):
        notes.append(
            "no preset: the expert-balance rules are off; pass --preset motion or --preset character "
            "(their advice is opposite) or set train.health.preset"
        )
    pair_rules = sorted(r for r in active_thresholds(cfg) if r.startswith(EXPERT_PAIR_RULES))
    if pair_rules and not {"high_noise", "low_noise"} <= set(run.experts):
        notes.append(
            f"{', '.join(pair_rules)} compare the high- and low-noise experts and do not apply: this run "
            f"trains {', '.join(run.experts)} only (a single-expert model, or one expert of Wan 2.2 A14B)"
        )
    notes += [f"left out (unreadable): {problem}" for problem in skipped]
    if not run.metrics:
        notes.append(f"no metrics_{run.name}.jsonl rows: LR, loss and stability columns are empty")
    files = {
        s: {e: run.checkpoints[e][s].name for e in run.experts if s in run.checkpoints[e]} for s in run.steps
    }
    return AnalysisReport(
        run_dir=str(run.run_dir),
        name=run.name,
        preset=cfg.preset,
        experts=run.experts,
        thresholds=active_thresholds(cfg),
        series=series,
        warnings=warnings,
        recommendations=recommend(series, warnings, cfg),
        files=files,
        notes=notes,
    )


def motion_notes(series: RunSeries, reference: MotionReference | None, remeasured: list[str]) -> list[str]:
    """What the motion columns rest on, in words."""
    notes = []
    if series.sampled and 0 in series.sampled:
        notes.append(
            f"sample motion before training (step 0, the base model): coarse "
            f"{series.sampled[0].stats.coarse:.4f} diag/s"
        )
    if reference is not None:
        speed = (
            f"; they play {reference.speedup:.1f}x faster than real time (frame plan at {reference.fps:g} fps)"
            if reference.speedup is not None and reference.speedup > 1.5
            else ""
        )
        notes.append(
            f"training clips' motion (motion_reference.json, {reference.clips} clips): coarse "
            f"{reference.stats.coarse:.4f} diag/s{speed}"
        )
    elif series.sampled:
        notes.append(
            "no motion_reference.json in the run folder (image-only data, or cached before Cadence measured "
            "it; `cadence cache CONFIG` writes it): motion is compared with its own peak only"
        )
    if remeasured:
        notes.append(
            f"re-measured {len(remeasured)} sample(s) whose file changed since training: {', '.join(remeasured)}"
        )
    return notes


def write_outputs(report: AnalysisReport) -> tuple[Path, Path]:
    """analysis.json and analysis.html in the run folder, each written atomically."""
    data = report.to_dict()
    run_dir = Path(report.run_dir)
    json_path, html_path = run_dir / "analysis.json", run_dir / "analysis.html"
    atomic_write_text(json_path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    atomic_write_text(html_path, render_html(data))
    return json_path, html_path


# ------------------------------------------------------------------------------------------- terminal
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None, show: bool) -> str:
    return f"{value:.2f}x" if show and value is not None else ""


def format_table(report: AnalysisReport) -> str:
    """One row per expert per checkpoint; the ratio columns sit on each checkpoint's first row."""
    motion = any(p.motion is not None for p in report.series.points)
    head = (
        f"{'step':>9}  {'expert':<10}  {'|dW| mean':>10}  {'growth':>7}  {'W ratio':>7}  {'LR':>9}  "
        f"{'LR ratio':>8}  {'loss mean±std (n)':>24}  {'grad stab':>9}  {'eval':>8}"
    ) + (f"  {'motion':>7}  {'of data':>7}  {'of peak':>7}" if motion else "")
    lines = [head, "-" * len(head)]
    for p in report.series.points:
        for i, (name, e) in enumerate(p.experts.items()):
            s, first = e.stats, i == 0
            loss = (
                "-"
                if s.loss_mean is None
                else f"{s.loss_mean:.4f}±{_fmt(s.loss_std, '.4f')} ({s.loss_count})"
            )
            evl = s.eval_loss if s.eval_loss is not None else (p.eval_loss if first else None)
            lines.append(
                f"{(p.step if first else ''):>9}  {name:<10}  {e.magnitude:>10.6f}  {_fmt(e.growth, '+.1%'):>7}  "
                f"{_ratio(p.weight_ratio, first):>7}  {_fmt(s.lr, '.2e'):>9}  {_ratio(p.lr_ratio, first):>8}  "
                f"{loss:>24}  {_fmt(s.grad_stability, '.3f'):>9}  {_fmt(evl, '.4f'):>8}"
                + (_motion_cells(p.motion if first else None, first) if motion else "")
            )
    return "\n".join(lines)


def _motion_cells(m: MotionPoint | None, first: bool) -> str:
    """Coarse sample motion (diag/s) and its fractions of the data's and of the run's peak."""
    if not first:
        return ""
    if m is None:
        return f"  {'-':>7}  {'-':>7}  {'-':>7}"
    return f"  {m.stats.coarse:>7.4f}  {_fmt(m.of_reference, '.0%'):>7}  {_fmt(m.of_peak, '.0%'):>7}"


def collapse_warnings(report: AnalysisReport) -> list[str]:
    """One line per run of the same rule/expert over consecutive checkpoints (a 30x repeat helps nobody)."""
    steps = [p.step for p in report.series.points]
    runs: list[tuple[str, str | None, list[HealthWarning]]] = []
    for w in sorted(report.warnings, key=lambda w: (w.rule, w.expert or "", w.step)):
        last = runs[-1] if runs else None
        adjacent = last is not None and steps.index(w.step) == steps.index(last[2][-1].step) + 1
        if last and adjacent and last[0] == w.rule and last[1] == w.expert:
            last[2].append(w)
        else:
            runs.append((w.rule, w.expert, [w]))
    out = []
    for rule, _expert, ws in sorted(runs, key=lambda r: r[2][0].step):
        where = f"step {ws[0].step}"
        if len(ws) > 1:
            where = f"steps {ws[0].step}-{ws[-1].step} ({len(ws)} checkpoints)"
        out.append(f"[{rule}] {where}: {ws[-1].message}")
    return out


def format_report(report: AnalysisReport, paths: tuple[Path, Path]) -> str:
    parts = [
        f"run {report.name} ({report.run_dir}), preset: {report.preset or 'none'}",
        "",
        format_table(report),
    ]
    if report.span is not None:
        parts += ["", *report.span.lines()]
    parts += ["", "Warnings:"] + ([f"  {line}" for line in collapse_warnings(report)] or ["  none"])
    parts += ["", "Recommended checkpoints:"]
    for rec in report.recommendations:
        names = ", ".join(report.files.get(rec.step, {}).values())
        parts.append(f"  step {rec.step}: {names}")
        parts += [f"    - {reason}" for reason in rec.reasons]
    parts += [f"note: {n}" for n in report.notes]
    parts += ["", f"wrote {paths[0]} and {paths[1]}"]
    return "\n".join(parts)


def analyze_command(args: argparse.Namespace) -> int:
    preset = getattr(args, "preset", None)
    if preset is not None and preset not in PRESET_CHOICES:
        log.error("--preset %r is not one of %s", preset, ", ".join(PRESET_CHOICES))
        return 2
    try:
        report = analyze_run(args.run_dir, preset=preset)
        since = getattr(args, "since", None)
        if since is not None:
            report.span = growth_span(report.series, since, getattr(args, "until", None))
        elif getattr(args, "until", None) is not None:
            raise ValueError("--until needs --since")
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    paths = write_outputs(report)
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(format_report(report, paths) + "\n")
    return 0
