"""Incremental metrics reads: only new bytes, torn lines left for later, per-expert downsampling."""

from __future__ import annotations

import json
from pathlib import Path

from cadence.ui.metrics_tail import downsample, read_metrics, read_text_tail


def _line(step: int, **extra) -> bytes:
    expert = "high_noise" if step % 2 else "low_noise"
    return (json.dumps({"step": step, "loss": 0.1 * step, "expert": expert, **extra}) + "\n").encode()


def test_reads_only_new_bytes_and_leaves_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics_x.jsonl"
    path.write_bytes(_line(1) + _line(2))
    first = read_metrics(path, 0)
    assert [r["step"] for r in first.records] == [1, 2] and first.offset == path.stat().st_size

    # Overwrite the already-read bytes with garbage: a reader that re-read the file would choke or repeat.
    size = first.offset
    path.write_bytes(b"x" * size + _line(3) + b'{"step": 4, "lo')
    second = read_metrics(path, first.offset)
    assert [r["step"] for r in second.records] == [3]
    assert second.offset == size + len(_line(3))  # stops before the torn line

    with open(path, "ab") as f:
        f.write(b'ss": 0.4}\n')
    third = read_metrics(path, second.offset)
    assert [r["step"] for r in third.records] == [4]
    assert read_metrics(path, third.offset).records == []


def test_a_shorter_file_resets(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(_line(1))
    chunk = read_metrics(path, 10_000)
    assert chunk.reset and [r["step"] for r in chunk.records] == [1]
    missing = read_metrics(tmp_path / "none.jsonl", 0)
    assert missing.records == [] and missing.offset == 0


def test_large_chunks_follow_more(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"".join(_line(i) for i in range(1, 201)))
    steps, offset, calls = [], 0, 0
    while True:
        chunk = read_metrics(path, offset, max_bytes=1000)
        steps += [r["step"] for r in chunk.records]
        offset, calls = chunk.offset, calls + 1
        if not chunk.more:
            break
    assert steps == list(range(1, 201)) and calls > 5


def test_downsample_keeps_both_experts_evals_and_phase_changes() -> None:
    records = [json.loads(_line(i)) for i in range(1, 10_001)]
    records[5001]["eval_loss"] = 0.5
    for r in records[7000:]:
        r["phase"] = "fine"
    for r in records[:7000]:
        r["phase"] = "coarse"
    kept, stride = downsample(records, max_points=500)
    assert stride == 10
    experts = {r["expert"] for r in kept}
    assert experts == {"high_noise", "low_noise"}
    assert 900 <= len(kept) <= 1100
    assert any(r.get("eval_loss") == 0.5 for r in kept)
    assert any(r["step"] in (7001, 7002) for r in kept)  # first line of the new phase of each expert
    assert kept[-1]["step"] == 10_000
    small, one = downsample(records[:100], max_points=500)
    assert one == 1 and len(small) == 100


def test_text_tail(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_text("a" * 100 + "END")
    text, offset = read_text_tail(path, None, initial_tail=10)
    assert text == "a" * 7 + "END" and offset == 103
    with open(path, "a") as f:
        f.write("more")
    assert read_text_tail(path, offset) == ("more", 107)
