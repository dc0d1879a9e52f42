"""Measurements mean what they say and never change the run they measure."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadence.metrics.jsonl import read_metrics
from cadence.train.runner import run_training

from .conftest import job_dict, write_job

MEASURED = ("eval_loss", "timestamp", "_time_s", "samples_per_s")


def _training_fields(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not any(m in k for m in MEASURED)} for row in rows]


@pytest.mark.slow
def test_eval_is_repeatable_and_does_not_change_training(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    def job(out: Path, eval_every: int | None) -> dict:
        spec = job_dict(tiny_i2v, clips, out, steps=12, eval_split=0.2, eval_every=eval_every)
        spec["network"]["dropout"] = 0.2  # LoRA dropout must be off during eval and its RNG untouched
        spec["network"]["network_kwargs"] = {"rank_dropout": 0.2}
        return spec

    assert run_training(write_job(tmp_path / "a.yaml", job(tmp_path / "a", 3))) == 0
    assert run_training(write_job(tmp_path / "b.yaml", job(tmp_path / "b", None))) == 0
    rows_a = read_metrics(tmp_path / "a" / "job" / "metrics_job.jsonl")
    rows_b = read_metrics(tmp_path / "b" / "job" / "metrics_job.jsonl")
    assert sum("eval_loss" in r for r in rows_a) == 4 and sum("eval_loss" in r for r in rows_b) == 1
    assert _training_fields(rows_a) == _training_fields(rows_b)
    assert rows_a[-1]["eval_loss"] == rows_b[-1]["eval_loss"]  # same weights, same number


@pytest.mark.slow
def test_lr_fields_report_the_lr_each_step_used(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    job = job_dict(tiny_i2v, clips, tmp_path / "w", steps=6, lr=1e-3, lr_warmup_steps=4)
    assert run_training(write_job(tmp_path / "w.yaml", job)) == 0
    rows = read_metrics(tmp_path / "w" / "job" / "metrics_job.jsonl")
    # turns of 3 steps: each expert warms up over its own first 4 steps (high: steps 1-3, 7; low: 4-6)
    assert [r["expert"] for r in rows] == ["high_noise"] * 3 + ["low_noise"] * 3
    assert [r["lr_high_noise"] for r in rows[:5]] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 7.5e-4])
    assert [r["lr_low_noise"] for r in rows[3:6]] == pytest.approx([0.0, 2.5e-4, 5e-4])


@pytest.mark.slow
def test_automagic_adapts_when_experts_alternate_every_step(
    tiny_i2v: Path, clips: Path, tmp_path: Path
) -> None:
    job = job_dict(
        tiny_i2v,
        clips,
        tmp_path / "m",
        steps=12,
        switch_boundary_every=1,
        optimizer="automagic",
        lr=1e-4,
        optimizer_params={"lr_bump": 1e-5, "min_lr": 1e-6, "max_lr": 1e-3},
    )
    assert run_training(write_job(tmp_path / "m.yaml", job)) == 0
    rows = read_metrics(tmp_path / "m" / "job" / "metrics_job.jsonl")
    assert [r["expert"] for r in rows[:4]] == ["high_noise", "low_noise", "high_noise", "low_noise"]
    for expert in ("high_noise", "low_noise"):
        assert len({r[f"lr_{expert}"] for r in rows}) > 2, "the per-element lr mask must move"
