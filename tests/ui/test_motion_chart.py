"""The job page charts the samples' motion and shows the analysis that flags it (headless Chromium).

The run folder is written the way training writes it (real LoRA files, real mp4 samples measured into their
sidecars, metrics lines carrying `sample_motion_*` on the line after each sampled step), with the last two
checkpoints' samples slower: the chart shows the drop and "Run analysis" reports motion_tame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from playwright.sync_api import Page, expect

from cadence.networks.formats import LoraTensors, save_lora_file
from cadence.sampling.writers import write_sample
from cadence.tools.sample_motion import SampleMotionReader, motion_fields

from . import test_browser
from .conftest import TOKEN, job_config
from .test_browser import _wait_points

server, page = test_browser.server, test_browser.page  # the same fixtures: a real server and Chromium

STEPS = [100, 200, 300, 400, 500, 600]
SPEED = {0: 1.0, 100: 4.0, 200: 4.0, 300: 4.0, 400: 4.0, 500: 1.5, 600: 1.5}


def _frames(speed: float) -> np.ndarray:
    yy, xx = np.mgrid[0:96, 0:128]
    out = np.empty((13, 96, 128, 3), dtype=np.uint8)
    checker = ((np.add.outer(np.arange(32), np.arange(32)) // 4) % 2 * 120 + 100).astype(np.uint8)
    for t in range(13):
        frame = (40 + xx * 60 // 128 + yy * 40 // 96).astype(np.uint8)
        x0 = int(round(8 + t * speed))
        frame[32:64, x0 : x0 + 32] = checker
        out[t] = np.repeat(frame[..., None], 3, axis=-1)
    return out


def _lora(magnitude: float) -> dict[str, LoraTensors]:
    down, up = torch.zeros(2, 8), torch.zeros(16, 2)
    down[0], up[:, 0] = 1.0, magnitude
    return {"blocks.0.attn1.to_q": LoraTensors(down, up, 2.0)}


def write_run_folder(run_dir: Path, name: str) -> None:
    samples = run_dir / "samples"
    samples.mkdir(parents=True)
    reader = SampleMotionReader(samples, verify=False)
    for step, speed in SPEED.items():
        write_sample(samples, step, 0, _frames(speed), 16, {"prompt": "a square", "step": step, "fps": 16})
    motion = reader.read()
    rows = []
    for k, step in enumerate(STEPS, start=1):
        for expert, magnitude in (("high_noise", 0.002 + 0.0012 * k), ("low_noise", 0.001 + 0.0005 * k)):
            meta = {"step": str(step), "expert": expert}
            save_lora_file(
                run_dir / f"{name}_{step:09d}_{expert}.safetensors",
                _lora(magnitude),
                meta,
                "comfyui",
                torch.float32,
            )
    for t in range(1, STEPS[-1] + 1):
        row = {
            "step": t,
            "timestamp": f"2025-01-01T00:{t // 60 % 60:02d}:{t % 60:02d}",
            "loss": 0.08 + 0.01 * ((t * 7919) % 13) / 13,
            "expert": ("high_noise", "low_noise")[(t - 1) % 2],
            "lr_high_noise": 4e-4,
            "lr_low_noise": 1e-4,
        }
        if t - 1 in motion:  # the line after a sampled step carries its motion, as in training
            row.update(motion_fields(motion, t - 1, None))
        rows.append(row)
    (run_dir / f"metrics_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "config.yaml").write_text(f"name: {name}\ntrain:\n  health:\n    preset: motion\n")


@pytest.mark.slow
def test_motion_chart_and_analysis(
    server: str, page: Page, tiny_model: Path, clips: Path, tmp_path: Path
) -> None:
    page.goto(server + "/login")
    page.fill("#token", TOKEN)
    page.click("#login-button")
    expect(page).to_have_url(server + "/")
    config = job_config(name="motion", model=tiny_model, data=clips, out=tmp_path / "runs", steps=600)
    created = page.request.post(server + "/api/jobs", data={"yaml": yaml.safe_dump(config), "queue": False})
    assert created.ok, created.text()
    job = created.json()
    write_run_folder(tmp_path / "runs" / "motion", "motion")

    page.goto(server + f"/jobs/{job['id']}")
    _wait_points(page, "loss", 600, 60)
    chart = page.locator("#chart-motion")
    expect(chart.locator("canvas")).to_have_count(1)
    # step 0 and checkpoints 100-500: the last step's samples are written after the run's last line
    assert chart.get_attribute("data-values") == "6"
    expect(chart.locator(".u-legend")).to_contain_text("coarse motion")
    expect(chart.locator(".u-legend")).to_contain_text("of peak")
    chart.screenshot(path=str(tmp_path / "motion_chart.png"))

    page.click("#btn-analyze")
    report = page.frame_locator("iframe.report")
    expect(report.locator("body")).to_contain_text("motion_tame", timeout=90_000)
    expect(report.locator("body")).to_contain_text("last checkpoint before motion_tame fired at step 600")
    expect(report.locator('img[alt="sample motion per sampled step"]')).to_have_count(1)
