"""How run analysis scales with the number of checkpoints: cost per checkpoint at 30, 300 and 3,000.

What it compares: the same code on synthetic runs of different lengths (checkpoints every `--every` steps,
two experts taking turns of `--turn` steps, a metrics row per step with the fields a real line has, |ΔW|
per block of 40 blocks, sample motion at every checkpoint, an eval loss at every fifth). The reference is
the smallest run: each size's cost per checkpoint is divided by the smallest size's, so 1.0 means the cost
grows linearly with the run and 10 means ten times the cost per checkpoint. Sizes run in rounds (the order
rotating from round to round), a smaller run repeated until it covers as many checkpoints as the largest, and
the median of the per-round ratios is printed with its spread, by wall clock and by this process's CPU time
(other jobs on a shared machine stretch the wall time of one side of a pair, not this process's CPU time).

- analysis: what `cadence analyze` does after reading the files: `build_series` + `evaluate` +
  `recommend` + the report's dict;
- html: `render_html` of that dict (the plots; "under a few seconds for long runs" is the goal);
- live: a whole run of live checks as the trainer makes them: `PeriodicChecks.run` at every step with the
  JSONL written line by line (`MetricsLog`), a health check at every checkpoint and the samples' sidecars
  appearing after each check; the cost per checkpoint of the run's total.

    .venv/bin/python bench/analysis_bench.py [--sizes 30,300,3000] [--live-sizes 30,300,3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairing import Spread  # noqa: E402

from cadence.config.health import HealthConfig  # noqa: E402
from cadence.metrics.jsonl import MetricsLog  # noqa: E402
from cadence.metrics.motion import MOTION_FORMAT, MotionStats  # noqa: E402
from cadence.networks.magnitude import MagnitudeSummary  # noqa: E402
from cadence.tools.analyze import AnalysisReport, active_thresholds  # noqa: E402
from cadence.tools.health import HealthMonitor, build_series, evaluate, recommend  # noqa: E402
from cadence.tools.report_html import render_html  # noqa: E402
from cadence.tools.sample_motion import StepMotion  # noqa: E402
from cadence.train.checkpoint import CheckpointManager, RunPaths  # noqa: E402
from cadence.train.checks import PeriodicChecks  # noqa: E402

PAIR = ("high_noise", "low_noise")
CFG = HealthConfig(preset="motion")


class Run:
    """A synthetic run: rows, per-checkpoint magnitudes and sample motion (deterministic per seed)."""

    def __init__(self, checkpoints: int, every: int, turn: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.every = every
        self.rows: list[dict] = []
        self.magnitudes: dict[int, dict[str, MagnitudeSummary]] = {}
        self.motion: dict[int, StepMotion] = {}
        for t in range(1, checkpoints * every + 1):
            expert = PAIR[((t - 1) // turn) % 2]
            level = 0.12 if expert == "high_noise" else 0.08
            row = {
                "step": t,
                "timestamp": "2026-01-01T00:00:00",
                "loss": level * math.exp(rng.gauss(0, 0.1)),
                "expert": expert,
                "t": rng.random(),
                "grad_norm": 0.3 + 0.1 * rng.random(),
                "lr_high_noise": 3e-4,
                "lr_low_noise": 1e-4,
                "gradient_stability": 0.55 + 0.05 * rng.random(),
                f"gradient_stability_{expert}": 0.55 + 0.05 * rng.random(),
                "gradient_stability_avg": 0.57,
                **{f"field_{i}": rng.random() for i in range(30)},  # the rest of a real line
            }
            if t % every == 0 and (t // every) % 5 == 0:
                row["eval_loss"] = 0.1 * math.exp(rng.gauss(0, 0.05))
            self.rows.append(row)
            if t % every == 0:
                k = t // every
                growth = {"high_noise": 1 - math.exp(-k / 8), "low_noise": 0.4 * (1 - math.exp(-k / 12))}
                self.magnitudes[t] = {
                    e: MagnitudeSummary(
                        0.01 * g * math.exp(rng.gauss(0, 0.01)),
                        {b: 0.01 * g * (1 + b / 40) for b in range(40)},
                    )
                    for e, g in growth.items()
                }
                coarse = 0.05 * math.exp(rng.gauss(0, 0.2))
                stats = MotionStats(coarse, coarse * 4, coarse, coarse / 4, 32, 16.0)
                self.motion[t] = StepMotion(t, stats, {0: stats})
        self.reference = MotionStats(0.06, 0.24, 0.06, 0.015, 32, 16.0)


def analysis(run: Run) -> dict:
    series = build_series(run.magnitudes, run.rows, run.motion, run.reference)
    warnings = evaluate(series, CFG)
    report = AnalysisReport(
        run_dir="/bench",
        name="bench",
        preset=CFG.preset,
        experts=list(PAIR),
        thresholds=active_thresholds(CFG),
        series=series,
        warnings=warnings,
        recommendations=recommend(series, warnings, CFG),
    )
    return report.to_dict()


def live(run: Run, root: Path) -> int:
    """Every step's live checks over the whole run, as the trainer calls them; returns warnings raised."""
    paths = RunPaths(root, "bench")
    (root / "samples").mkdir(parents=True)
    current: dict[str, int] = {"step": 0}
    checks = PeriodicChecks(
        None,
        None,
        HealthMonitor(CFG),
        lambda _ev: {},
        lambda: run.magnitudes[current["step"]],
        paths.metrics,
        CheckpointManager(paths, 5, list(PAIR)),
    )
    log = MetricsLog(paths.metrics)
    raised = 0
    for row in run.rows:
        step = current["step"] = row["step"]
        line = dict(row)
        fields = checks.run(step, step % run.every == 0, line)
        raised += len(fields.get("health_warnings", []))
        log.write({**line, **fields})
        if step in run.motion:  # the samples of a checkpoint land after its check, as in training
            stats = run.motion[step].stats
            sidecar = {"motion": {**stats.to_dict(), "format": MOTION_FORMAT}}
            (root / "samples" / f"{step:09d}_00.json").write_text(json.dumps(sidecar))
    log.close()
    return raised


def per_checkpoint(kind: str, run: Run, checkpoints: int, tmp: Path, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds per checkpoint of `repeats` runs of one kind (a small run repeated, so both sides
    of a ratio last about as long: a run of milliseconds cannot be timed on a shared machine)."""
    wall = cpu = 0.0
    for _ in range(repeats):
        data = analysis(run) if kind == "html" else None
        start, start_cpu = time.perf_counter(), time.process_time()
        if kind == "analysis":
            analysis(run)
        elif kind == "html":
            render_html(data)
        else:
            live(run, Path(tempfile.mkdtemp(dir=tmp)))
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    return wall / checkpoints / repeats, cpu / checkpoints / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="30,300,3000", help="checkpoint counts for analysis and html")
    parser.add_argument("--live-sizes", default="30,300,3000", help="checkpoint counts for the live run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--turn", type=int, default=5, help="steps per expert turn")
    parser.add_argument("--kinds", default="analysis,html,live")
    args = parser.parse_args(argv)
    sizes = {
        "analysis": [int(s) for s in args.sizes.split(",")],
        "html": [int(s) for s in args.sizes.split(",")],
        "live": [int(s) for s in args.live_sizes.split(",") if s],
    }
    own_logger = logging.getLogger("cadence")
    level = own_logger.level
    own_logger.setLevel(logging.ERROR)  # the live checks' warnings are not the point here
    try:
        return _run(args, sizes)
    finally:
        own_logger.setLevel(level)  # a caller's (e.g. a test's) logging is left as it was


def _run(args: argparse.Namespace, sizes: dict[str, list[int]]) -> int:
    """Each kind's per-checkpoint cost at each size, in rounds of alternating order."""
    out = sys.stdout.write
    with tempfile.TemporaryDirectory() as tmp:
        for kind in [k for k in args.kinds.split(",") if k and sizes.get(k)]:
            counts = sorted(sizes[kind])
            runs = {c: Run(c, args.every, args.turn) for c in counts}
            per: dict[int, list[float]] = {c: [] for c in counts}
            ratios: dict[int, list[float]] = {c: [] for c in counts[1:]}
            cpu_ratios: dict[int, list[float]] = {c: [] for c in counts[1:]}
            repeats = {c: 1 if kind == "html" else max(1, counts[-1] // c) for c in counts}
            for round_index in range(args.rounds):
                order = counts[round_index % len(counts) :] + counts[: round_index % len(counts)]
                measured = {c: per_checkpoint(kind, runs[c], c, Path(tmp), repeats[c]) for c in order}
                for c in counts:
                    per[c].append(measured[c][0])
                for c in counts[1:]:
                    ratios[c].append(measured[c][0] / measured[counts[0]][0])
                    cpu_ratios[c].append(measured[c][1] / measured[counts[0]][1])
            for c in counts:
                median = Spread.of(per[c]).median
                line = f"{kind:8s} {c:5d} checkpoints: {median * 1e3:8.3f} ms per checkpoint ({median * c:.2f} s a run)"
                if c in ratios:
                    line += f"; per checkpoint vs {counts[0]}: wall {Spread.of(ratios[c]).text('.2f')}"
                    line += f", CPU {Spread.of(cpu_ratios[c]).median:.2f}"
                out(line.replace(" pairs)", " rounds)") + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
