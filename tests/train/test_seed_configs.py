"""The seed trainer's published configs run on the tiny model, and their conv-alpha phases really move the
(Linear-only) Wan adapters — the seed fork's schedule changed nothing on Wan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cadence.metrics.jsonl import read_metrics
from cadence.networks.formats import load_lora_file
from cadence.train.runner import run_training

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _shrink(process: dict, model: Path, data: Path, out: Path, arch: str) -> None:
    """Point a real-size seed config at the tiny model and clips; keep every other key as published."""
    process.update(training_folder=str(out), device="cpu")
    dataset = process["datasets"][0]
    dataset.update(folder_path=str(data), resolution=[32])
    dataset.pop("max_pixels_per_frame", None)
    if dataset.get("num_frames", 1) > 1:
        dataset["num_frames"] = 5
    process["train"].update(steps=30, dtype="fp32")
    if arch == "wan22_14b_i2v":  # expert switching exists only with two experts (refused elsewhere)
        process["train"]["switch_boundary_every"] = 5
    process["save"]["save_every"] = 15
    process["model"].update(name_or_path=str(model), arch=arch)


@pytest.mark.slow
def test_seed000_video_config_runs_and_phases_drive_linear_alpha(
    tiny_i2v: Path, clips: Path, tmp_path: Path
) -> None:
    data = yaml.safe_load((EXAMPLES / "seed000_video_alpha.yaml").read_text())
    process = data["config"]["process"][0]
    _shrink(process, tiny_i2v, clips, tmp_path / "out", "wan22_14b_i2v")
    config = tmp_path / "seed000.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run_training(config) == 0
    run = tmp_path / "out" / "i2v_alpha_scheduling"
    rows = read_metrics(run / "metrics_i2v_alpha_scheduling.jsonl")
    assert len(rows) == 30 and rows[0]["phase"] == "foundation"
    # conv_alpha_phases on a Linear-only model drive the Linear adapters: foundation alpha 8, not the fixed 16
    assert {row["linear_alpha"] for row in rows} == {8.0}
    for expert in ("high_noise", "low_noise"):
        lora = load_lora_file(run / f"i2v_alpha_scheduling_000000030_{expert}.safetensors")
        assert {t.alpha for t in lora.modules.values()} == {8.0}
    assert (run / "i2v_alpha_scheduling_000000030_alpha_scheduler.json").exists()
    assert "applied to the trained Linear adapters" in (run / "log.txt").read_text()


@pytest.mark.slow
def test_seed001_image_threshold_config_runs(clips: Path, tmp_path: Path) -> None:
    from cadence.models.tiny import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny_wan21", "wan21")
    data = yaml.safe_load((EXAMPLES / "seed001_image_thresholds.yaml").read_text())
    process = data["config"]["process"][0]
    _shrink(process, model, clips, tmp_path / "out", "wan21")
    # adamw8bit needs bitsandbytes on CUDA; on this CPU machine the same job runs with adamw.
    process["train"]["optimizer"] = "adamw"
    config = tmp_path / "seed001.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run_training(config) == 0
    name = data["config"]["name"]
    rows = read_metrics(tmp_path / "out" / name / f"metrics_{name}.jsonl")
    assert len(rows) == 30 and all(row["expert"] is None for row in rows)
    assert rows[-1]["phase"] == "foundation" and rows[-1]["linear_alpha"] == 64.0
    assert (tmp_path / "out" / name / f"{name}_000000030.safetensors").exists()
