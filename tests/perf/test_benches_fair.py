"""The benches (issue 23): every one has --help saying what it compares, the pairing helper alternates and
summarises, and the fair decode, cache-read and analysis benches run on small inputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# every bench but the distributed work's own (bench/scaling_bench.py); pairing.py is the shared helper
OURS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in {"pairing", "scaling_bench"})


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_benches_are_found() -> None:
    assert {"train_step_bench", "decode_bench", "cache_read_bench", "analysis_bench"} <= set(OURS)


@pytest.mark.parametrize("name", OURS)
def test_help_says_what_the_bench_compares(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = _load(name)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:") and len(text) > 300, text[:200]


def test_pairs_alternate_their_order_and_summarise_the_ratios() -> None:
    pairing = _load("pairing")
    calls: list[str] = []
    pairs = pairing.run_pairs(lambda: calls.append("a"), lambda: calls.append("b"), pairs=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(pairs.ours) == len(pairs.reference) == 3
    spread = pairing.Spread.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (spread.median, spread.low, spread.high, spread.count) == (3.0, 1.0, 100.0, 5)
    assert spread.q1 == 2.0 and spread.q3 == 4.0
    made = pairing.Pairs([2.0, 3.0], [1.0, 3.0])
    assert made.ratios() == [2.0, 1.0] and made.speed_ratio().median == 0.75
    assert "2 pairs" in pairing.ratio_line("x", made)


def test_decode_bench_reference_produces_cadences_frames(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("decode_bench")
    assert bench.main(["--frames", "9", "--size", "64", "--resolution", "48", "--pairs", "2"]) == 0
    out = capsys.readouterr().out  # main refuses to time a reference that decodes other frames
    assert out.count("speed ours/reference") == 3


def test_cache_read_bench_compares_with_safetensors_and_checks_the_cold_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("cache_read_bench")
    argv = ["--items", "2", "--pairs", "2", "--width", "64", "--height", "64", "--frames", "5"]
    assert bench.main([*argv, "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "warm (page cache): ours" in out and "cold (from the disk): ours" in out
    assert "pages dropped before every read" in out or "CANNOT defeat the page cache" in out


def test_analysis_bench_runs_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("analysis_bench")
    assert bench.main(["--sizes", "4,8", "--live-sizes", "4,8", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for kind in ("analysis", "html", "live"):
        assert f"{kind:8s}     8 checkpoints" in out and "per checkpoint vs 4" in out
