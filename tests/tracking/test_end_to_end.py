"""`cadence train` with every sink on, then a resume: what arrived at W&B (offline files), two webhook
receivers and a local Hub, and that no secret is left in anything the run wrote.

The first run is a real `cadence train` process: huggingface_hub reads HF_HUB_OFFLINE when it is imported, and
this test session runs with the Hub offline. The resume runs here, where the upload cannot succeed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cadence.config.loader import load_config
from cadence.metrics.jsonl import read_metrics
from cadence.train.loop import Trainer
from cadence.train.setup import build_training

from . import wandb_files
from .conftest import HF_TOKEN, HOOK_SECRET, Runs, tracked_job
from .servers import WebhookReceiver


@pytest.mark.slow
def test_webhooks_receive_every_event_of_the_run(runs: Runs) -> None:
    assert runs.first.returncode == 0, runs.first.stderr[-3000:]
    kinds = [e["event"] for e in runs.first_events]
    assert kinds[0] == "start" and runs.first_events[0]["data"] == {"total_steps": 4, "resumed": False}
    by_kind = {k: [e for e in runs.first_events if e["event"] == k] for k in set(kinds)}
    (checkpoint,) = by_kind["checkpoint"]
    assert checkpoint["step"] == 4 and checkpoint["data"]["files"] == [
        "job_000000004_high_noise.safetensors",
        "job_000000004_low_noise.safetensors",
        "job_000000004_alpha_scheduler.json",
    ]
    (sample,) = by_kind["sample"]
    assert sample["step"] == 4 and "samples/000000004_00.mp4" in sample["data"]["files"] and sample["images"]
    phases = by_kind["alpha_phase"]  # each expert leaves foundation after its 2nd step: steps 2 and 4
    assert [(e["step"], e["data"]["expert"]) for e in phases] == [(2, "high_noise"), (4, "low_noise")]
    assert all((e["data"]["from_phase"], e["data"]["to_phase"]) == ("foundation", "emphasis") for e in phases)
    (warning,) = by_kind["health_warning"]
    assert (warning["step"], warning["data"]["rule"], warning["severity"]) == (
        4,
        "weight_ratio_high",
        "warning",
    )
    assert [(e["step"], e["data"]["status"]) for e in by_kind["finish"]] == [(4, "completed")]
    assert kinds.index("finish") > kinds.index("checkpoint") and kinds.index("finish") > kinds.index("sample")
    # the Hub upload's outcome comes last, after its retried commit went through
    assert kinds[-1] == "publish" and runs.first_events[-1]["data"]["status"] == "published"
    discord = runs.receiver.posts(f"/discord/{HOOK_SECRET}")
    texts = [
        r.json()["content"] if "json" in r.headers["content-type"] else r.form()["payload_json"]
        for r in discord
    ]
    assert sum("**Health warning** (step 4)" in t for t in texts) == 1
    assert sum("**Alpha phase change**" in t for t in texts) == 2 and "**Hub upload**" in texts[-1]


@pytest.mark.slow
def test_the_hub_received_the_checkpoint_card_and_samples(runs: Runs) -> None:
    repo = runs.hub.repos["someone/tracked-lora"]
    assert repo.private is True and len(repo.commits) == 1 and runs.hub.unexpected == []
    commits = [r for r in runs.hub.requests if r.path.endswith("/commit/main")]
    assert len(commits) == 2  # the first answered HTTP 500 and was sent again
    files = repo.commits[0]["files"]
    assert sorted(files) == [
        "README.md",
        "config.yaml",
        "job_000000004_alpha_scheduler.json",
        "job_000000004_high_noise.safetensors",
        "job_000000004_low_noise.safetensors",
        "samples/000000004_00.mp4",
        "samples/000000004_00.png",
        "samples/000000004_00.webp",
    ]
    for name in ("job_000000004_high_noise.safetensors", "samples/000000004_00.mp4"):
        assert files[name] == (runs.run_dir / name).read_bytes()
    card = files["README.md"].decode()
    assert (
        card.startswith("---\n") and "pipeline_tag: image-to-video" in card and "instance_prompt: sks" in card
    )
    posts = [r for r in runs.hub.requests if r.method == "POST"]
    assert len(posts) >= 4 and all(r.headers.get("authorization") == f"Bearer {HF_TOKEN}" for r in posts)


@pytest.mark.slow
def test_the_resume_continues_the_same_wandb_run_and_survives_a_refused_upload(runs: Runs) -> None:
    assert runs.second_rc == 0  # a refused upload never fails the run
    later = [r.json() for r in runs.receiver.posts(f"/raw/{HOOK_SECRET}")][len(runs.first_events) :]
    assert later[0]["event"] == "start" and later[0]["step"] == 4 and later[0]["data"]["resumed"] is True
    assert [e["step"] for e in later if e["event"] == "checkpoint"] == [8]
    assert later[-1]["event"] == "publish" and later[-1]["data"]["status"] == "publish_failed"
    assert later[-1]["severity"] == "error"
    assert "save.push_to_hub: upload to someone/tracked-lora failed" in runs.second_log
    assert f"cadence publish {runs.run_dir} --repo someone/tracked-lora" in runs.second_log
    assert (runs.run_dir / "job_000000008_high_noise.safetensors").is_file()  # nothing local was lost

    state = torch.load(runs.run_dir / "training_state" / "step_000000008" / "state.pt", weights_only=False)
    run_id = state["tracking"]["wandb"]["run_id"]
    logs = wandb_files.offline_runs(runs.run_dir)
    assert len(logs) == 2
    first, second = (wandb_files.records(p) for p in logs)
    for records in (first, second):
        (run,) = wandb_files.of_type(records, "run")
        assert (run.run_id, run.project, run.display_name) == (run_id, "cadence-tests", "tracked")
    assert wandb_files.of_type(second, "run")[0].resume

    rows = {r["step"]: r for r in read_metrics(runs.run_dir / "metrics_job.jsonl")}
    history = [h for h in wandb_files.history(first) + wandb_files.history(second) if "loss" in h]
    assert [h["_step"] for h in history] == list(range(1, 9))
    for logged in history:  # the TensorBoard scalars, per expert, exactly as in the JSONL
        row = rows[logged["_step"]]
        numeric = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        numeric.pop("step")
        assert {k: logged[k] for k in numeric} == pytest.approx(numeric), logged["_step"]
    assert any("loss_ema_10_high_noise" in h and "lr_low_noise" in h for h in history)

    media = [h for h in wandb_files.history(first) if "samples/00._type" in h]
    assert [h["_step"] for h in media] == [4]
    assert media[0]["samples/00._type"] == "video-file" and media[0]["samples/00.caption"] == "a sks cat"
    assert (logs[0].parent / "files" / media[0]["samples/00.path"]).is_file()
    assert media[0]["samples/00_first_frame._type"] == "image-file"
    tables = [h for h in wandb_files.history(first) if "events._type" in h]
    assert tables and tables[-1]["events._type"] == "table-file"
    alerts = wandb_files.of_type(first, "alert")
    assert [a.level for a in alerts] == ["WARN"] and "weight_ratio_high" in alerts[0].title
    logged_config = {
        i.key: json.loads(i.value_json) for i in wandb_files.of_type(first, "run")[0].config.update
    }
    assert logged_config["train"]["steps"] == 4
    assert {h["webhook_url"] for h in logged_config["logging"]["webhooks"]} == {"<redacted>"}
    assert wandb_files.of_type(second, "exit")[0].exit_code == 0


@pytest.mark.slow
def test_no_secret_is_left_in_anything_the_run_wrote(runs: Runs) -> None:
    secrets = (HF_TOKEN.encode(), HOOK_SECRET.encode())
    checked = 0
    for path in runs.run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s in data for s in secrets), path
            checked += 1
    assert checked > 20
    assert HF_TOKEN not in runs.first.stderr and HOOK_SECRET not in runs.first.stderr
    for commit in runs.hub.repos["someone/tracked-lora"].commits:
        assert not any(s in blob for blob in commit["files"].values() for s in secrets)


@pytest.mark.slow
def test_a_run_that_stops_on_an_error_sends_the_failure(
    tiny_i2v: Path, tracking_clips: Path, tmp_path: Path
) -> None:
    """Every cache entry vanishes after setup: the loop gives up (exit 3) and the receivers hear why."""
    receiver = WebhookReceiver()
    hooks = [f"{receiver.url}/raw", {"webhook_type": "discord", "webhook_url": f"{receiver.url}/discord"}]
    job = tracked_job(
        tiny_i2v, tracking_clips, tmp_path / "out", 3, {"tensorboard": False, "webhooks": hooks}
    )
    job["train"].update({"disable_sampling": True, "health": None})
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job, sort_keys=False))
    setup = build_training(load_config(config))
    shutil.rmtree(setup.paths.run_dir / "latent_cache")
    try:
        assert Trainer(setup).run() == 3
    finally:
        receiver.close()
    events = [r.json() for r in receiver.posts("/raw")]
    assert [e["event"] for e in events] == ["start", "failure"]
    failure = events[1]
    assert failure["severity"] == "error" and failure["step"] == 1
    assert "batches in a row had no cache entry" in failure["data"]["error"]
    assert "**Training failed** (step 1)" in receiver.posts("/discord")[-1].json()["content"]
