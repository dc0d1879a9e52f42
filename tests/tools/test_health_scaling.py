"""The health analysis in linear time (issue 23): prefix tables answer as a rescan of the earlier checkpoints
would, the live checks (fed row by row, the metrics file read once) judge as the post-hoc analysis does,
the sample-motion reader reports what changed, and long runs render."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
from pathlib import Path

import pytest

from cadence.config.health import HealthConfig
from cadence.metrics.jsonl import MetricsLog, read_metrics
from cadence.metrics.motion import MOTION_FORMAT, MotionStats
from cadence.networks.magnitude import MagnitudeSummary
from cadence.tools.analyze import AnalysisReport
from cadence.tools.health import HealthMonitor, active_thresholds, build_series, evaluate, recommend
from cadence.tools.health_motion import log_noise
from cadence.tools.report_html import MAX_TICKS, _thinned, render_html
from cadence.tools.run_folder import interval_stats
from cadence.tools.sample_motion import SampleMotionReader, StepMotion
from cadence.tools.series_index import has_losses, pool
from cadence.train.checkpoint import CheckpointManager, RunPaths
from cadence.train.checks import PeriodicChecks

PAIR = ("high_noise", "low_noise")
EVERY, TURN = 6, 4  # checkpoints every 6 steps, turns of 4: balanced and unbalanced checkpoints alternate
CFG = HealthConfig(preset="motion", thresholds={"high_noise_magnitude_low": None})


def _stats(coarse: float) -> MotionStats:
    return MotionStats(coarse, coarse * 4, coarse, coarse / 4, 32, 16.0)


def synthetic_run(checkpoints: int = 40, seed: int = 3):
    """Rows, magnitudes and motion of a run that degrades late: the low-noise expert catches up, its loss
    rises and the samples become tame, so most rules have something to say."""
    rng = random.Random(seed)
    rows, mags, motion = [], {}, {}
    for t in range(1, checkpoints * EVERY + 1):
        expert = PAIR[((t - 1) // TURN) % 2]
        late = t > checkpoints * EVERY * 0.6
        level = (0.12 if expert == "high_noise" else 0.08) * (1.4 if late and expert == "low_noise" else 1.0)
        row = {
            "step": t,
            "expert": expert,
            "loss": level * math.exp(rng.gauss(0, 0.05)),
            "lr_high_noise": 3e-4,
            "lr_low_noise": 1e-4 if t % 50 else None,
            f"gradient_stability_{expert}": 0.5 + 0.1 * rng.random(),
            "gradient_stability": 0.4 + 0.2 * rng.random(),
        }
        if t % (EVERY * 5) == 0:
            row["eval_loss"] = 0.1 + 0.01 * rng.random()
        rows.append(row)
        if t % EVERY == 0:
            k = t // EVERY
            low_boost = 1.0 + (0.04 * (k - 0.6 * checkpoints) if k > 0.6 * checkpoints else 0.0)
            high = 0.01 * (1 - math.exp(-k / 6)) * math.exp(rng.gauss(0, 0.01))
            low = 0.004 * (1 - math.exp(-k / 9)) * low_boost
            mags[t] = {
                e: MagnitudeSummary(m, {b: m * (1 + b / 8) for b in range(8)})
                for e, m in (("high_noise", high), ("low_noise", low))
            }
            coarse = 0.05 * math.exp(rng.gauss(0, 0.1)) * (0.5 if k > 0.85 * checkpoints else 1.0)
            if k % 3:  # not every checkpoint is sampled
                motion[t] = StepMotion(t, _stats(coarse), {0: _stats(coarse)})
    return rows, mags, motion, _stats(0.08)


def _naive_median_turn(rows: list[dict]) -> int | None:
    experts = [r["expert"] for r in rows if r.get("expert") in PAIR]
    if not experts:
        return None
    runs, length = [], 1
    for a, b in zip(experts, experts[1:], strict=False):
        length, runs = (length + 1, runs) if a == b else (1, [*runs, length])
    return sorted([*runs, length])[len(runs + [length]) // 2]


def test_prefix_tables_answer_as_a_rescan_of_the_earlier_checkpoints_would() -> None:
    rows, mags, motion, reference = synthetic_run()
    series = build_series(mags, rows, motion, reference)
    points = series.points
    assert series.turn == _naive_median_turn(rows) == TURN
    steps = [0, *sorted(mags)]
    for i, p in enumerate(points):
        for expert, e in p.experts.items():  # intervals read in one pass = the per-interval definition
            assert e.stats == interval_stats(rows, steps[i], steps[i + 1], expert)
        assert series.balanced(i) == series.point_balanced(i)
        earlier = [k for k in range(i) if series.point_balanced(k)]
        assert series.previous_balanced(i) == (earlier[-1] if earlier else None)
        peak = series.tables(i).ratio_peak_before(i)
        if earlier:
            best = max(earlier, key=lambda k: points[k].weight_ratio or 0.0)  # the first highest
            assert peak == best
        else:
            assert peak is None
    assert 0 < sum(series.balanced(i) for i in range(len(points))) < len(points)
    tables = series.tables(len(points) - 1)
    for expert in PAIR:  # each expert's best pool of two consecutive loss intervals so far
        pairs = tables.losses[expert]
        trained = [k for k in range(len(points)) if has_losses(points[k], expert)]
        assert pairs.trained == trained
        for n in range(4, len(trained) + 1):
            stats = [points[k].experts[expert].stats for k in trained[:n]]
            pools = [pool(a, b) for a, b in zip(stats[: n - 3], stats[1 : n - 2], strict=True)]
            assert pairs.pools[pairs.best[n - 4]] == min(pools, key=lambda x: x.loss_mean)
    table = tables.motion
    values = [p.motion.stats.coarse for p in points if p.motion is not None]
    assert table.values == values and len(values) > 10
    from cadence.tools.health_motion import table_noise

    for m in range(2, len(values) + 1):  # the noise unit from prefix sums = the direct formula
        assert table_noise(table, m) == pytest.approx(log_noise(values[:m]), rel=1e-12)
        pairs_mean = [(a + b) / 2 for a, b in zip(values[: m - 1], values[1:m], strict=True)]
        assert table.pair_best[m - 2] == pairs_mean.index(max(pairs_mean))
    limit = 0.05
    runs = table.runs_above(limit)
    for m in range(1, len(values) + 1):
        run = 0
        while run < m and values[m - 1 - run] > limit:
            run += 1
        assert runs[m - 1] == run


def _write_sidecar(folder: Path, step: int, stats: MotionStats, with_motion: bool = True) -> None:
    motion = {**stats.to_dict(), "format": MOTION_FORMAT} if with_motion else None
    tmp = folder / f".{step:09d}_00.json.tmp"
    tmp.write_text(json.dumps({"step": step, "motion": motion}))
    tmp.replace(folder / f"{step:09d}_00.json")  # atomically, as the sampler writes


def test_live_checks_fed_row_by_row_judge_as_the_post_hoc_analysis(tmp_path: Path) -> None:
    rows, mags, motion, _reference = synthetic_run()
    end = rows[-1]["step"]
    rows += [{"step": end + k, "expert": rows[-1]["expert"], "loss": 0.1} for k in (1, 2)]  # the last samples
    paths = RunPaths(tmp_path / "run", "run")
    samples = paths.run_dir / "samples"
    samples.mkdir(parents=True)
    current = {"step": 0}
    monitor = HealthMonitor(CFG)
    checks = PeriodicChecks(
        None,
        None,
        monitor,
        lambda _e: {},
        lambda: mags[current["step"]],
        paths.metrics,
        CheckpointManager(paths, 5, list(PAIR)),
    )
    log = MetricsLog(paths.metrics)
    raised: dict[int, list[str]] = {}
    for row in rows:
        step = current["step"] = row["step"]
        fields = checks.run(step, step % EVERY == 0, dict(row))
        raised[step] = fields.get("health_warnings", [])
        log.write({**row, **fields})
        if step == 1:  # from now on the file is not read again: emptying it changes nothing
            paths.metrics.write_text("")
        if step - 1 in motion:  # the sample's motion, measured a step after its sidecar appeared
            _write_sidecar(samples, step - 1, motion[step - 1].stats)
        if step in motion:  # samples land after the checkpoint's check, their motion not measured yet
            _write_sidecar(samples, step, motion[step].stats, with_motion=False)
    log.close()
    assert len(read_metrics(paths.metrics)) == len(rows) - 1  # the file really lost its first line
    series = monitor.series
    assert series is not None
    batch = build_series(mags, rows, motion, None)
    assert [p.step for p in series.points] == [p.step for p in batch.points]
    for live_point, point in zip(series.points, batch.points, strict=True):
        assert live_point.experts == point.experts and live_point.weight_ratio == point.weight_ratio
        assert live_point.motion == point.motion and live_point.eval_loss == point.eval_loss
    post_hoc = evaluate(batch, CFG, finished=False)
    assert {w.rule for w in post_hoc} >= {"low_noise_outgrowing", "loss_rising", "motion_tame"}
    live_keys = {(w.rule, w.step, w.expert) for ws in monitor._evaluation.per_point for w in ws}
    assert live_keys == {(w.rule, w.step, w.expert) for w in post_hoc}
    motion_rules = {"motion_tame", "motion_excess", "low_noise_outgrowing"}
    assert monitor.reported == {(w.rule, w.step, w.expert) for w in post_hoc if w.rule in motion_rules}
    others = {(w.rule, w.step) for w in post_hoc if w.rule not in motion_rules}
    assert others == {
        (rule, step) for step, rules in raised.items() for rule in rules if rule not in motion_rules
    }
    last = monitor.check(end + EVERY, mags[end], None, motion, None)  # one more checkpoint, judged live
    final = build_series({**mags, end + EVERY: mags[end]}, rows, motion, None)
    warnings = evaluate(final, CFG, finished=False)
    assert last.recommendations == recommend(
        final, [w for w in warnings if not (w.step == final.points[-1].step and w.rule in motion_rules)], CFG
    )


def test_sample_reader_reports_changed_steps_and_keeps_the_rest(tmp_path: Path) -> None:
    reader = SampleMotionReader(tmp_path, verify=False)
    _write_sidecar(tmp_path, 10, _stats(0.1))
    _write_sidecar(tmp_path, 20, _stats(0.2), with_motion=False)
    first = reader.read()
    assert list(first) == [10] and reader.changed == {10}
    kept = first[10]
    _write_sidecar(tmp_path, 20, _stats(0.2))  # its motion now written
    second = reader.read()
    assert list(second) == [10, 20] and reader.changed == {20} and second[10] is kept
    assert reader.read() is second and reader.changed == set()  # nothing new: no listing, no change
    (tmp_path / f"{10:09d}_00.json").unlink()
    assert list(reader.read()) == [20] and reader.changed == {10}


def test_sample_reader_sees_a_rewrite_that_left_the_folder_stamp_unchanged(tmp_path: Path) -> None:
    """A kernel with coarse timestamps gives two writes in one tick the same folder mtime: a fresh stamp
    must not stand for the folder's content (the motion written second would never be read)."""
    reader = SampleMotionReader(tmp_path, verify=False)
    _write_sidecar(tmp_path, 10, _stats(0.1), with_motion=False)
    assert reader.read() == {}
    stamp = tmp_path.stat().st_mtime_ns
    _write_sidecar(tmp_path, 10, _stats(0.1))
    os.utime(tmp_path, ns=(stamp, stamp))  # as a coarse clock would have stamped the rename
    assert list(reader.read()) == [10] and reader.changed == {10}


def test_a_long_run_renders_with_thinned_ticks_and_the_motion_reference() -> None:
    assert _thinned(5) == [0, 1, 2, 3, 4]
    ticks = _thinned(3000)
    assert len(ticks) <= MAX_TICKS and ticks[0] == 0 and ticks[-1] == 2999
    rows, mags, motion, reference = synthetic_run(checkpoints=250)
    series = build_series(mags, rows, motion, reference)
    warnings = evaluate(series, CFG)
    report = AnalysisReport(
        "/run",
        "run",
        CFG.preset,
        list(PAIR),
        active_thresholds(CFG),
        series,
        warnings,
        recommend(series, warnings, CFG),
    )
    page = render_html(report.to_dict())  # the training clips' line on the motion plot (a KeyError before)
    assert page.count("<img ") == 9 and "sample motion per sampled step" in page
    assert statistics.mean(len(p) for p in page.split("data:image/png;base64,")[1:]) > 1000
