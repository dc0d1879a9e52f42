"""`cadence publish`: the exact upload folder (--dry-run), the model card, and the upload through
huggingface_hub's real client to the local Hub, with a retried failure and refusals explained."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import yaml
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from cadence.tools.analyze import analyze_run
from cadence.tools.model_card import CardFile, CardInputs, CardSample, render_card
from cadence.tools.publish import MARKER, PublishError, _permanent, publish_command, publish_run

from .conftest import HF_TOKEN, Runs


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.mark.slow
def test_dry_run_writes_the_exact_folder_with_a_card_that_says_how_to_load_each_expert(runs: Runs) -> None:
    folder, url = publish_run(runs.run_dir, "someone/motion-lora", checkpoint=4, dry_run=True)
    assert url is None and folder == runs.run_dir / "hub_upload"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == [
        MARKER,  # not uploaded (upload_folder ignores it): it lets a rebuild clear only its own folder
        "README.md",
        "config.yaml",
        "job_000000004_alpha_scheduler.json",
        "job_000000004_high_noise.safetensors",
        "job_000000004_low_noise.safetensors",
        "samples/000000004_00.mp4",
        "samples/000000004_00.png",
        "samples/000000004_00.webp",
    ]
    for name in files[3:]:
        assert (folder / name).read_bytes() == (runs.run_dir / name).read_bytes()
    public = yaml.safe_load((folder / "config.yaml").read_text())
    local = yaml.safe_load((runs.run_dir / "config.yaml").read_text())
    assert public["name"] == local["name"] and public["train"] == local["train"]
    assert str(runs.run_dir.parent) not in (folder / "config.yaml").read_text()  # no machine paths on the Hub
    assert public["datasets"][0]["folder_path"] == Path(local["datasets"][0]["folder_path"]).name
    card = (folder / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["pipeline_tag"] == "image-to-video" and meta["instance_prompt"] == "sks"
    assert "base_model" not in meta  # trained from a local folder: no Hub id to link
    assert {"lora", "cadence", "wan2.2"} <= set(meta["tags"])
    assert meta["widget"] == [{"text": "a sks cat", "output": {"url": "samples/000000004_00.webp"}}]
    assert (
        "| high_noise | [`job_000000004_high_noise.safetensors`](job_000000004_high_noise.safetensors) | 4 |"
        in card
    )
    assert "LoraLoaderModelOnly** node on the high-noise model (`wan2.2_i2v_high_noise_14B`" in card
    assert "LoraLoaderModelOnly** node on the low-noise model (`wan2.2_i2v_low_noise_14B`" in card
    assert 'weight_name="job_000000004_high_noise.safetensors", adapter_name="high_noise")' in card
    assert (
        'weight_name="job_000000004_low_noise.safetensors", adapter_name="low_noise", load_into_transformer_2=True)'
        in card
    )
    assert "WanImageToVideoPipeline" in card and "width=32, height=32, num_frames=5" in card
    assert '<video src="samples/000000004_00.mp4"' in card
    assert "| steps | 8 |" in card and "Trigger word: `sks`" in card
    assert "- [weight_ratio_high] steps 4-8 (2 checkpoints): high/low" in card  # the analysis summary
    assert "A LoRA adapter for Wan 2.2 I2V A14B" in card and meta["tags"].count("lora") == 1
    best = analyze_run(runs.run_dir).recommendations[0].step
    assert f"`cadence analyze` recommends step {best}; this repo holds step 4" in card
    assert str(runs.run_dir.parent) not in card  # no local path leaks into what is published


@pytest.mark.slow
def test_publish_command_uploads_the_best_checkpoint_and_retries_a_failed_request(runs: Runs) -> None:
    runs.hub.fail_creates = 1  # create_repo answers 500 once: publish's own retry sends it again
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": runs.hub.url, "HF_TOKEN": HF_TOKEN}
    command = [sys.executable, "-m", "cadence.cli", "publish", str(runs.run_dir), "--repo", "someone/best"]
    result = subprocess.run(
        [*command, "--checkpoint", "best", "--private"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "upload to someone/best failed (attempt 1 of 3)" in result.stderr
    best = analyze_run(runs.run_dir).recommendations[0].step
    repo = runs.hub.repos["someone/best"]
    assert repo.private is True and len(repo.commits) == 1
    assert repo.commits[0]["summary"] == f"Cadence: job checkpoint step {best}"
    uploaded = repo.commits[0]["files"]
    name = f"job_{best:09d}_low_noise.safetensors"
    assert uploaded[name] == (runs.run_dir / name).read_bytes() and MARKER not in uploaded
    assert f"published {len(uploaded)} files" in result.stdout and "someone/best" in result.stdout


def test_a_wrong_checkpoint_or_a_refused_token_is_explained(
    runs_dir_without_checkpoints: Path, caplog
) -> None:
    args = argparse.Namespace(
        run_dir=str(runs_dir_without_checkpoints), repo="a/b", checkpoint=None, private=False, dry_run=True
    )
    assert publish_command(args) == 2
    assert "no LoRA checkpoints" in caplog.text
    request = httpx2.Request("POST", "http://127.0.0.1/api/repos/create")
    refused = HfHubHTTPError("403 Forbidden", response=httpx2.Response(403, request=request))
    assert "refused the token (HTTP 403)" in (_permanent(refused) or "")
    assert "HF_HUB_OFFLINE" in (_permanent(OfflineModeIsEnabled("offline")) or "")
    busy = HfHubHTTPError("503", response=httpx2.Response(503, request=request))
    assert _permanent(busy) is None  # retried


@pytest.mark.slow
def test_an_unknown_step_lists_the_saved_ones(runs: Runs) -> None:
    with pytest.raises(PublishError, match="no checkpoint at step 5; saved steps: 4, 8"):
        publish_run(runs.run_dir, "a/b", checkpoint=5, dry_run=True)


@pytest.fixture
def runs_dir_without_checkpoints(tmp_path: Path) -> Path:
    (tmp_path / "config.yaml").write_text("name: job\n")
    return tmp_path


def test_a_card_for_a_hub_base_model_in_the_diffusers_layout() -> None:
    inputs = CardInputs(
        name="style",
        repo_id="someone/style",
        step=500,
        arch="wan22_5b",
        base_model="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        config={"network": {"type": "lora", "linear": 16}, "train": {"steps": 500}, "sample": {}},
        files=[CardFile("main", "style_000000500.safetensors", "diffusers", {"rank": "16", "alpha": "16"})],
        samples=[CardSample("a red car", {".png": "samples/000000500_00.png"}, 500)],
        analysis_note="No analysis: no metrics",
    )
    card = render_card(inputs)
    meta = _front_matter(card)
    assert (meta["base_model"], meta["base_model_relation"], meta["pipeline_tag"]) == (
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        "adapter",
        "text-to-video",
    )
    assert "which ComfyUI does not read; convert them with `cadence convert FILE OUT --to comfyui`" in card
    assert 'WanPipeline.from_pretrained("Wan-AI/Wan2.2-TI2V-5B-Diffusers"' in card
    assert "load_into_transformer_2" not in card and "fps=24" in card
    assert "![sample](samples/000000500_00.png)" in card and "No analysis: no metrics" in card


def test_single_file_checkpoints_publish_with_their_diffusers_base_and_no_local_paths(tmp_path: Path) -> None:
    from cadence.tools.publish import _base_model, public_config_text

    model = {
        "arch": "wan22_14b_i2v",
        "name_or_path": {
            "high_noise": "/home/me/ckpt/high.safetensors",
            "low_noise": "/home/me/ckpt/low.safetensors",
        },
        "extras_name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    }
    assert _base_model(model) == "Wan-AI/Wan2.2-I2V-A14B-Diffusers"  # the file is no Hub id; its base is
    assert (
        _base_model({"name_or_path": "/m/flux1.safetensors", "extras_name_or_path": "/m/flux"}) == "/m/flux"
    )
    assert _base_model({"name_or_path": "owner/model"}) == "owner/model"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": dict(model, extras_name_or_path="/home/me/wan_diffusers")}))
    public = yaml.safe_load(public_config_text(config))["model"]
    assert public["name_or_path"] == {"high_noise": "high.safetensors", "low_noise": "low.safetensors"}
    assert public["extras_name_or_path"] == "wan_diffusers"
