"""Motion rules on real sample files: a run folder whose later samples are replaced by slower renders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_health import Interval, write_run

from cadence.cli import main
from cadence.config.health import HealthConfig
from cadence.data.motion_reference import REFERENCE_FILE, MotionReference
from cadence.metrics.motion import MotionStats
from cadence.networks.magnitude import MagnitudeSummary
from cadence.sampling.writers import write_mp4, write_sample
from cadence.tools.analyze import analyze_run
from cadence.tools.health import HealthMonitor, build_series, evaluate
from cadence.tools.sample_motion import StepMotion, read_sample_motion

STEPS = [100, 200, 300, 400, 500, 600]
# healthy weights (ratio ~2.1-2.3x, LR ratio 4x, high |ΔW| reaches 0.0092): only motion can go wrong here
WEIGHTS = [Interval(s, 0.002 + 0.0012 * k, 0.001 + 0.0005 * k) for k, s in enumerate(STEPS, start=1)]


def render(speed: float, frames: int = 13, width: int = 128, height: int = 96) -> np.ndarray:
    """A checkered square moving `speed` px/frame to the right over a gradient, RGB uint8."""
    yy, xx = np.mgrid[0:height, 0:width]
    side = height // 3
    checker = ((np.add.outer(np.arange(side), np.arange(side)) // 4) % 2 * 120 + 100).astype(np.uint8)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        frame = (40 + xx * 60 // width + yy * 40 // height).astype(np.uint8)
        x0 = int(round(8 + t * speed))
        frame[height // 3 : height // 3 + side, x0 : x0 + side] = checker
        out[t] = np.repeat(frame[..., None], 3, axis=-1)
    return out


def sampled_run(tmp_path: Path, speeds: dict[int, float]) -> Path:
    """A run folder (LoRA files, metrics) with one sample per sampled step, written as training writes them."""
    run_dir = write_run(tmp_path, WEIGHTS)
    samples = run_dir / "samples"
    samples.mkdir()
    for step, speed in speeds.items():
        write_sample(samples, step, 0, render(speed), 16, {"prompt": "a square", "step": step, "fps": 16})
    return run_dir


FAST = {0: 1.0, **{s: 4.0 for s in STEPS}}


def test_slower_renders_trigger_motion_tame_and_the_checkpoint_before(tmp_path: Path, capsys) -> None:
    run_dir = sampled_run(tmp_path, FAST)
    steady = analyze_run(run_dir, preset="motion")
    assert steady.warnings == []
    assert steady.series.points[-1].motion is not None and steady.series.points[-1].motion.of_peak == 1.0
    # the samples of the last two checkpoints replaced by slower renders (their sidecars still say fast)
    for step in (500, 600):
        write_mp4(run_dir / "samples" / f"{step:09d}_00.mp4", render(1.5), 16)
    assert main(["analyze", str(run_dir), "--preset", "motion"]) == 0
    out = capsys.readouterr().out
    assert "[motion_tame] step 600: sample coarse motion fell to" in out
    assert "step 400: run_000000400_high_noise.safetensors" in out
    assert "last checkpoint before motion_tame fired at step 600" in out
    assert "re-measured 2 sample(s) whose file changed since training" in out
    header, rule, *rows = out.split("Warnings:")[0].strip().splitlines()[2:]
    assert "motion" in out.splitlines()[2] and "of peak" in out.splitlines()[2]
    by_step = {line.split()[0]: line for line in [header, rule, *rows] if line[:9].strip().isdigit()}
    assert by_step["400"].rstrip().endswith("100%") and by_step["600"].split()[-1] in {
        "36%",
        "37%",
        "38%",
        "39%",
    }

    measured = json.loads((run_dir / "analysis_motion.json").read_text())["samples"]
    assert sorted(measured) == ["000000500_00.mp4", "000000600_00.mp4"]  # kept: the next analysis reuses them
    data = json.loads((run_dir / "analysis.json").read_text())
    tame = next(w for w in data["warnings"] if w["rule"] == "motion_tame")
    assert tame["step"] == 600 and tame["from_step"] == 400 and tame["value"] < 0.7
    assert [m["step"] for m in data["sample_motion"]] == [0, *STEPS]
    last = data["checkpoints"][-1]["motion"]
    assert last["of_peak"] < 0.5 and last["of_reference"] is None and last["samples"] == 1
    html = (run_dir / "analysis.html").read_text()
    assert 'alt="sample motion per sampled step"' in html and "<th>motion (coarse)</th>" in html

    # one slow checkpoint is not a trend
    write_mp4(run_dir / "samples" / f"{600:09d}_00.mp4", render(4.0), 16)
    assert [w.rule for w in analyze_run(run_dir, preset="motion").warnings] == []


def _reference(run_dir: Path, coarse: float) -> None:
    stats = MotionStats(coarse, 4 * coarse, coarse, coarse / 4, 16, 16.0, clips=3)
    ref = MotionReference(stats, clips=3, skipped=0, fps=16.0, speedup=1.0)
    (run_dir / REFERENCE_FILE).write_text(json.dumps(ref.to_dict()))


def test_motion_excess_against_the_training_clips(tmp_path: Path) -> None:
    speeds = {100: 1.5, 200: 1.5, 300: 4.0, 400: 4.0, 500: 4.0, 600: 4.0}
    run_dir = sampled_run(tmp_path, speeds)
    calm = read_sample_motion(run_dir)[0][100].stats.coarse
    _reference(run_dir, calm)  # the data moves like the calm early samples
    report = analyze_run(run_dir, preset="motion")
    fired = {(w.rule, w.step) for w in report.warnings}
    assert fired == {("motion_excess", s) for s in (400, 500, 600)}
    excess = next(w for w in report.warnings if w.step == 400)
    assert excess.from_step == 200 and "the training clips'" in excess.message
    assert report.recommendations[0].step == 200
    assert report.series.points[0].motion.of_reference == pytest.approx(1.0)
    assert any("training clips' motion (motion_reference.json, 3 clips)" in n for n in report.notes)
    # a LoRA that moves too much from its first sample has no calmer checkpoint to go back to
    _reference(run_dir, calm / 4)
    report = analyze_run(run_dir, preset="motion")
    assert {w.step for w in report.warnings if w.rule == "motion_excess"} == set(STEPS[1:])
    assert all("motion_excess" not in " ".join(r.reasons) for r in report.recommendations)


def _stats(coarse: float) -> MotionStats:
    return MotionStats(coarse, 4 * coarse, coarse, coarse / 4, 16, 16.0)


def _motion(values: dict[int, float]) -> dict[int, StepMotion]:
    return {s: StepMotion(s, _stats(v), {0: _stats(v)}) for s, v in values.items()}


def _mags(high: float, low: float) -> dict[str, MagnitudeSummary]:
    return {"high_noise": MagnitudeSummary(high), "low_noise": MagnitudeSummary(low)}


ROWS = [{"step": t, "expert": ("high_noise", "low_noise")[t % 2]} for t in range(1, 701)]


def test_a_fall_to_the_datas_own_motion_is_settling_not_taming() -> None:
    mags = {s: _mags(0.004 + 0.001 * k, 0.002 + 0.0004 * k) for k, s in enumerate(STEPS)}
    motion = _motion({100: 0.2, 200: 0.2, 300: 0.2, 400: 0.2, 500: 0.1, 600: 0.1})

    def rules(reference: MotionStats | None) -> set[str]:
        return {w.rule for w in evaluate(build_series(mags, ROWS, motion, reference), HealthConfig())}

    assert rules(None) == {"motion_tame"}
    assert rules(_stats(0.15)) == {"motion_tame"}  # below the data's motion as well
    assert rules(_stats(0.1)) == set()  # "crazy" early motion (2x the data's) settling at the data's level


def test_live_checks_judge_a_checkpoints_samples_once_they_exist() -> None:
    """The loop writes a checkpoint's metrics line (and checks it) before sampling it: the motion verdict on
    checkpoint 600 comes at the next step, by `review`, and can stop the run there."""
    cfg = HealthConfig(
        preset="motion", stop_on=["motion_tame"], thresholds={"high_noise_magnitude_low": None}
    )
    monitor = HealthMonitor(cfg)
    speeds = {0: 0.2, 100: 0.2, 200: 0.2, 300: 0.2, 400: 0.2, 500: 0.1, 600: 0.1}
    seen: dict[int, float] = {0: speeds[0]}  # the baseline is sampled before step 1
    results = []
    for k, step in enumerate(STEPS):
        rows = [r for r in ROWS if r["step"] <= step]
        results.append(monitor.check(step, _mags(0.004 + 0.001 * k, 0.002 + 0.0004 * k), rows, _motion(seen)))
        seen[step] = speeds[step]  # sampled after the check
        review = monitor.review(step + 1, rows, _motion(seen), None)
        assert review is not None
        results.append(review)
    stops = [(r.step, r.stop_reason) for r in results if r.stop_reason]
    assert len(stops) == 1 and stops[0][0] == 601 and "motion_tame fired at step 600" in stops[0][1]
    final = results[-1]
    assert [w.rule for w in final.warnings] == ["motion_tame"] and final.recommendations[0].step == 400
    # reported once: the next check does not raise it again
    again = monitor.check(700, _mags(0.011, 0.0045), ROWS, _motion(seen))
    assert "motion_tame" not in [w.rule for w in again.warnings]
    # a resume from a state that did not record what was raised does not raise the old warnings again
    resumed = HealthMonitor(cfg)
    resumed.magnitudes, resumed.reported = dict(monitor.magnitudes), None
    late = resumed.review(701, ROWS, _motion(seen), None)
    assert late is not None and late.warnings == [] and late.stop_reason is None


def test_live_outgrowing_waits_for_the_checkpoints_samples() -> None:
    """low_noise_outgrowing needs tamer samples where samples exist: live, the verdict on the latest
    checkpoint waits until its samples are measured."""
    mags = {100: _mags(0.0030, 0.0024), 200: _mags(0.0045, 0.0037), 300: _mags(0.0056, 0.0047)}
    mags[400] = _mags(0.0056 * 1.054, 0.0047 * 1.071)  # seed 003: +5.4% vs +7.1%, ratio 1.19x
    for later, expected in ((0.15, ["low_noise_outgrowing"]), (0.25, [])):
        monitor = HealthMonitor(HealthConfig(preset="motion"))
        seen = {0: 0.2, 100: 0.2, 200: 0.2, 300: 0.2}
        for step in (100, 200, 300):
            monitor.check(step, mags[step], [r for r in ROWS if r["step"] <= step], _motion(seen))
        rows = [r for r in ROWS if r["step"] <= 400]
        at_check = monitor.check(400, mags[400], rows, _motion(seen))
        assert "low_noise_outgrowing" not in [w.rule for w in at_check.warnings]
        seen[400] = later
        review = monitor.review(401, rows, _motion(seen), None)
        assert review is not None and [w.rule for w in review.warnings] == expected, later
    # without samples at all the weights alone decide, at the check itself
    monitor = HealthMonitor(HealthConfig(preset="motion"))
    results = [monitor.check(s, mags[s], [r for r in ROWS if r["step"] <= s]) for s in (100, 200, 300, 400)]
    assert [w.rule for w in results[-1].warnings] == ["low_noise_outgrowing"]
