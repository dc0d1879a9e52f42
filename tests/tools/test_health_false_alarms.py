"""The rates docs/analyze.md quotes come from bench/health_false_alarms.py; a small run of it holds them."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "health_false_alarms", ROOT / "bench" / "health_false_alarms.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["health_false_alarms"] = module
    spec.loader.exec_module(module)
    return module


def test_outgrowing_needs_evidence_on_simulated_runs() -> None:
    bench, rng = _bench(), random.Random(1)
    healthy = [bench.weight_run(rng, degrade=False)[0] for _ in range(20)]
    assert all(bench.old_outgrowing_fires(m) for m in healthy)  # the old rule cried wolf on every one
    assert sum(bool(bench.outgrowing_steps(m)) for m in healthy) <= 1
    for _ in range(10):
        mags, below = bench.weight_run(rng, degrade=True)
        fired = bench.outgrowing_steps(mags)
        assert fired and fired[0] <= (below + 2) * bench.EVERY  # by the checkpoint after the crossing


def test_motion_tame_ignores_stationary_noise_and_catches_a_lasting_drop() -> None:
    bench, rng = _bench(), random.Random(2)
    assert sum(bool(bench.tame_steps(bench.stationary_motion(rng, 0.2))) for _ in range(20)) <= 1
    assert all(bench.tame_steps(bench.tame_motion(rng, 0.1, 0.5, 2)) == [30 * bench.EVERY] for _ in range(10))


def test_bench_prints_its_table(capsys) -> None:
    assert _bench().main(["--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "low_noise_outgrowing, healthy runs: before issue 24 fired in 3/3" in out
    assert out.count("motion_tame, noise sd") == 3
