"""Caption jobs through the HTTP API: the real `cadence caption` on a tiny Qwen2.5-VL, queued on the CPU slot by
the same runner as training, stopped with SIGINT (state stopped, finished captions kept, the summary in the
job log), requests checked, and the store's `kind` column added to an older database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from cadence.data.synthetic import render_frame, write_clip
from cadence.models.tiny_vlm import write_tiny_vlm
from cadence.ui.runner import JobRunner
from cadence.ui.store import Job, JobStore

from .conftest import wait_for

FILES = 16  # the Stop after 2 files must land before the last one starts, also on a loaded machine


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vlm(tmp_path_factory.mktemp("vlm") / "qwen2_5_vl", "qwen2_5_vl", seed=0)


def dataset(folder: Path, files: int = FILES) -> Path:
    folder.mkdir(parents=True)
    for i in range(files):
        if i % 4 == 0:
            write_clip(folder / f"clip_{i}.mp4", 64, 48, 9, 16, seed=i)
        else:
            Image.fromarray(render_frame(i, 64, 48, seed=i)).save(folder / f"img_{i}.png")
    return folder


def _job(client, job_id: str) -> dict:
    response = client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_caption_job_runs_and_stops(make_client, monkeypatch, tmp_path: Path, vlm: Path) -> None:
    data = dataset(tmp_path / "clips")
    monkeypatch.setenv("CADENCE_DATASET_ROOTS", str(data))
    client = make_client(stop_timeout=30)
    body = {"root": str(data), "model": str(vlm), "frames": 2, "max_new_tokens": 24, "trigger_word": "sks"}
    response = client.post("/api/datasets/caption-jobs", json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["kind"] == "caption" and job["total_steps"] == FILES and job["device"] == "cpu"
    args = Path(job["config_path"]).read_text().splitlines()
    assert args[0] == str(data) and f"--model={vlm}" in args and "--trigger-word=sks" in args
    assert client.post(f"/api/jobs/{job['id']}/clone").status_code == 409  # training-only actions
    assert client.post(f"/api/jobs/{job['id']}/analyze").status_code == 409

    wait_for(lambda: (_job(client, job["id"])["step"] or 0) >= 2, 180, "two files captioned")
    assert client.post(f"/api/jobs/{job['id']}/stop").json()["status"] == "stopping"
    stopped = wait_for(
        lambda: (j := _job(client, job["id"]))["status"] in ("stopped", "failed", "finished") and j,
        60,
        "stop",
    )
    assert stopped["status"] == "stopped", stopped
    assert stopped["caption"]["state"] == "stopped" and stopped["step"] < FILES
    written = stopped["caption"]["written"]
    first = {p.name: p.read_text() for p in data.glob("*.txt")}
    assert len(first) == written >= 2 and all(text.startswith("sks") for text in first.values())
    log = client.get(f"/api/jobs/{job['id']}/log").json()["text"]
    assert "caption stopped" in log and "run the same command again" in log

    listing = client.get("/api/datasets/files", params={"root": str(data)}).json()["items"]
    assert sum(1 for item in listing if item["caption"]) == written
    jobs = client.get("/api/datasets/caption-jobs", params={"root": str(data)}).json()["jobs"]
    assert [j["id"] for j in jobs] == [job["id"]]
    # Start queues it again (the same arguments: files with a caption are skipped, see test_caption_resume)
    assert client.post(f"/api/jobs/{job['id']}/start").json()["status"] in ("queued", "running")
    assert client.post(f"/api/jobs/{job['id']}/stop").json()["status"] in ("created", "stopping")
    wait_for(lambda: _job(client, job["id"])["status"] in ("created", "stopped"), 60, "the second stop")


def test_caption_job_requests_are_checked(make_client, monkeypatch, tmp_path: Path, vlm: Path) -> None:
    data = dataset(tmp_path / "clips", files=1)
    monkeypatch.setenv("CADENCE_DATASET_ROOTS", str(data))
    client = make_client()
    post = lambda **kw: client.post("/api/datasets/caption-jobs", json={"root": str(data), **kw})  # noqa: E731
    assert client.post("/api/datasets/caption-jobs", json={"root": str(tmp_path)}).status_code == 404
    missing = post(model=str(tmp_path / "nope"))
    assert missing.status_code == 422 and "does not exist" in missing.json()["detail"]
    assert "line break" in post(model=str(vlm), trigger_word="a\nb").json()["detail"]
    assert post(model=str(vlm), device="7").status_code == 422
    assert post(model=str(vlm), frames=0).status_code == 422
    assert client.get("/api/jobs").json()["jobs"] == []  # nothing stored for a refused request
    jobs_dir = client.app.state.ctx.home / "jobs"
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir())  # nor a job folder


def test_runner_command_per_kind_and_old_database_gains_kind(tmp_path: Path) -> None:
    db = tmp_path / "cadence.db"
    with sqlite3.connect(db) as conn:  # the table as the first release created it (no kind column)
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, device TEXT NOT "
            "NULL, config_yaml TEXT NOT NULL, config_path TEXT NOT NULL, run_dir TEXT NOT NULL, total_steps "
            "INTEGER NOT NULL DEFAULT 0, pid INTEGER, pid_create_time REAL, exit_code INTEGER, error TEXT, "
            "created_at REAL NOT NULL, queued_at REAL, started_at REAL, stop_requested_at REAL, stop_stage "
            "INTEGER NOT NULL DEFAULT 0, finished_at REAL)"
        )
        conn.execute(
            "INSERT INTO jobs (id, name, status, device, config_yaml, config_path, run_dir, created_at) VALUES "
            "('old', 'old', 'finished', 'cpu', 'x', '/c/config.yaml', '/r', 1.0)"
        )
    store = JobStore(db)
    old = store.get("old")
    assert old is not None and old.kind == "train"
    runner = JobRunner(store, tmp_path, train_cmd=("T",), caption_cmd=("C",), gpus=[])
    assert runner.command(old) == ["T", "/c/config.yaml"]
    caption = Job("new", "cap", "created", "cpu", "", "/j/caption.args", "/r", kind="caption")
    store.add(caption)
    assert store.get("new").kind == "caption"
    assert runner.command(caption) == ["C", "@/j/caption.args"]
