"""PeriodicChecks as the training loop drives it: sample motion on the metrics lines and a stop on tame samples."""

from __future__ import annotations

from pathlib import Path

import torch
from test_health_motion import _mags, render

from cadence.config.health import HealthConfig
from cadence.metrics.jsonl import MetricsLog, read_metrics
from cadence.sampling.writers import write_sample
from cadence.tools.health import HealthMonitor
from cadence.train.checkpoint import CheckpointManager, RunPaths
from cadence.train.checks import PeriodicChecks


def test_training_checks_carry_motion_and_stop_on_tame_samples(tmp_path: Path) -> None:
    """PeriodicChecks as the training loop drives it: line, checkpoint, then samples; the line after the
    samples carries their motion, and the tame samples of checkpoint 600 stop the run at step 601."""
    paths = RunPaths(tmp_path / "run", "run")
    (paths.run_dir / "samples").mkdir(parents=True)
    manager = CheckpointManager(paths, keep=10, labels=["high_noise", "low_noise"])
    cfg = HealthConfig(
        preset="motion", stop_on=["motion_tame"], thresholds={"high_noise_magnitude_low": None}
    )

    def checks() -> PeriodicChecks:
        return PeriodicChecks(
            None, None, HealthMonitor(cfg), lambda _e: {}, lambda: _mags(*weights[0]), paths.metrics, manager
        )

    live, weights = checks(), [(0.0, 0.0)]
    speeds = {0: 1.0, 100: 4.0, 200: 4.0, 300: 4.0, 400: 4.0, 500: 1.5, 600: 1.5, 700: 1.5}
    write_sample(paths.samples, 0, 0, render(speeds[0]), 16, {"step": 0, "fps": 16})
    log = MetricsLog(paths.metrics)
    step = 0
    for step in range(1, 801):
        weights[0] = (0.002 + 0.0012 * step / 100, 0.001 + 0.0005 * step / 100)
        row = {"step": step, "loss": 0.08, "expert": ("high_noise", "low_noise")[step % 2]}
        row.update({"lr_high_noise": 4e-4, "lr_low_noise": 1e-4})
        saving = step % 100 == 0
        row.update(live.run(step, saving, row))
        log.write(row)
        if saving:
            manager.save(step, {}, {"x": torch.zeros(1)}, {"step": step})
            write_sample(paths.samples, step, 0, render(speeds[step]), 16, {"step": step, "fps": 16})
        if live.stop_reason:
            break
    log.close()
    assert step == 601 and live.stop_reason is not None
    assert (
        "motion_tame fired at step 600" in live.stop_reason
        and "keeping checkpoint step 400" in live.stop_reason
    )
    rows = read_metrics(paths.metrics)
    assert {r["step"]: r["sample_motion_step"] for r in rows if "sample_motion_step" in r} == {
        1: 0,
        101: 100,
        201: 200,
        301: 300,
        401: 400,
        501: 500,
        601: 600,
    }
    assert rows[-1]["health_warnings"] == ["motion_tame"] and "health_stop" in rows[-1]
    assert rows[500]["sample_motion_of_peak"] < 0.5 and rows[100]["sample_motion_of_peak"] == 1.0
    assert 400 in manager.protected

    resumed = checks()  # a resume restores what was reported, so nothing is raised twice
    resumed.load_state_dict(live.state_dict())
    assert resumed.motion_reported == 600 and resumed.health is not None
    assert resumed.health.reported == live.health.reported  # type: ignore[union-attr]
