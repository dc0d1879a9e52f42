"""`cadence demo` (what `make demo` runs) works end to end: tiny model, real clips, caching, training, analysis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_trains_both_experts_and_reports(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cadence.cli", "demo", "--out", str(tmp_path / "demo"), "--steps", "20"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "demo" / "output" / "demo_motion_lora"
    for expert in ("high_noise", "low_noise"):
        assert (run / f"demo_motion_lora_000000020_{expert}.safetensors").exists()
    assert (run / "metrics_demo_motion_lora.jsonl").read_text().count("\n") == 20
    assert (run / "analysis.html").exists() and any((run / "tensorboard").iterdir())
    assert "LoRA files:" in result.stdout and "Recommended checkpoints" in result.stdout
    assert any((tmp_path / "demo" / "dataset" / "_cadence_cache").rglob("*.safetensors"))
