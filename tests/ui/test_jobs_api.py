"""Job lifecycle through the HTTP API with the real `cadence train` on the tiny model and a real SQLite file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from cadence.ui.store import JobStore

from .conftest import config_yaml, wait_for


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts; one reaped while asked, too)."""
    try:
        return not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    except psutil.NoSuchProcess:
        return True


def _job(client, job_id: str) -> dict:
    response = client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_form_errors_come_back_at_their_fields(
    make_client, tiny_model: Path, clips: Path, tmp_path: Path
) -> None:
    client = make_client()
    form = {
        "name": "bad/name",
        "model.name_or_path": str(tiny_model),
        "model.arch": "wan22_14b_i2v",
        "datasets[0].folder_path": str(clips),
        "datasets[0].num_frames": 6,
        "train.lr": -1,
    }
    response = client.post("/api/jobs", json={"form": form})
    assert response.status_code == 422
    paths = {issue["path"] for issue in response.json()["issues"]}
    assert {"name", "datasets[0].num_frames", "train.lr"} <= paths
    assert client.get("/api/jobs").json()["jobs"] == []  # nothing stored for a rejected config

    response = client.post("/api/jobs", json={"yaml": "name: [unclosed\n"})
    assert response.status_code == 422
    assert "line" in response.json()["issues"][0]["message"]

    form.update(
        {"name": "good", "datasets[0].num_frames": 5, "train.lr": 0.001, "training_folder": str(tmp_path)}
    )
    response = client.post("/api/jobs", json={"form": form})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "created" and job["run_dir"] == str((tmp_path / "good").resolve())
    again = client.post("/api/jobs", json={"form": form})
    assert again.status_code == 422 and again.json()["issues"][0]["path"] == "name"


def test_lifecycle_stop_checkpoint_clone_delete_and_detached_runs(
    make_client, tiny_model: Path, clips: Path, tmp_path: Path
) -> None:
    client = make_client()
    text = config_yaml(
        name="life", model=tiny_model, data=clips, out=tmp_path / "runs", steps=400, save_every=1000
    )
    created = client.post("/api/jobs", json={"yaml": text, "device": "cpu", "queue": True})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    wait_for(lambda: (_job(client, job_id)["step"] or 0) >= 3, 180, "the first metrics lines")

    # Metrics: incremental by byte offset; a second read from the returned offset has only new lines.
    first = client.get(f"/api/jobs/{job_id}/metrics", params={"offset": 0}).json()
    assert first["records"] and first["records"][0]["step"] == 1 and first["offset"] > 0
    later = client.get(f"/api/jobs/{job_id}/metrics", params={"offset": first["offset"]}).json()
    assert all(r["step"] > first["records"][-1]["step"] for r in later["records"])

    # The UI goes away; the job keeps running, and a new UI over the same home still sees it running.
    client.__exit__(None, None, None)
    pid = JobStore(client.app.state.ctx.store.db_path).get(job_id).pid
    assert psutil.pid_exists(pid)
    client = make_client(stop_timeout=60)
    assert _job(client, job_id)["status"] == "running"
    busy = client.delete(f"/api/jobs/{job_id}")  # a running job is never forgotten under its trainer
    assert busy.status_code == 409 and "stop it first" in busy.json()["detail"], busy.text
    assert _job(client, job_id)["status"] == "running" and psutil.pid_exists(pid)

    stopped = client.post(f"/api/jobs/{job_id}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopping"
    final = wait_for(
        lambda: (j := _job(client, job_id))["status"] not in ("running", "stopping") and j,
        120,
        "the graceful stop",
    )
    assert final["status"] == "stopped" and final["exit_code"] == 0, final
    artifacts = client.get(f"/api/jobs/{job_id}/artifacts").json()
    names = [c["name"] for c in artifacts["checkpoints"]]
    assert any(n.endswith("_high_noise.safetensors") for n in names), names
    download = client.get(
        "/api/files", params={"path": artifacts["checkpoints"][0]["path"], "download": True}
    )
    assert (
        download.status_code == 200
        and download.content[:8]
        and "attachment" in download.headers["content-disposition"]
    )
    log = client.get(f"/api/jobs/{job_id}/log").json()["text"]
    assert "SIGINT" in log

    clone = client.post(f"/api/jobs/{job_id}/clone")
    assert clone.status_code == 201 and clone.json()["name"] == "life_copy"
    assert clone.json()["run_dir"] != final["run_dir"]
    assert client.delete(f"/api/jobs/{job_id}").status_code == 200
    assert client.get(f"/api/jobs/{job_id}").status_code == 404
    assert Path(final["run_dir"]).is_dir()  # deleting a job keeps its LoRAs


def test_queue_runs_one_cpu_job_at_a_time_to_completion(
    make_client, tiny_model: Path, clips: Path, tmp_path: Path
) -> None:
    client = make_client()
    ids = []
    for name in ("first", "second"):
        text = config_yaml(
            name=name, model=tiny_model, data=clips, out=tmp_path / "runs", steps=3, save_every=3
        )
        ids.append(client.post("/api/jobs", json={"yaml": text, "queue": True}).json()["id"])
    statuses = [_job(client, i)["status"] for i in ids]
    assert statuses == ["running", "queued"], statuses
    wait_for(lambda: _job(client, ids[1])["status"] == "finished", 240, "both jobs to finish")
    first, second = _job(client, ids[0]), _job(client, ids[1])
    assert first["status"] == "finished" and first["exit_code"] == 0
    assert second["started_at"] >= first["finished_at"] - 1.5  # never ran together on the one CPU slot
    assert (Path(second["run_dir"]) / "second_000000003_low_noise.safetensors").is_file()


def test_reconcile_after_the_runner_is_killed(
    make_client, tiny_model: Path, clips: Path, tmp_path: Path
) -> None:
    client = make_client()
    text = config_yaml(name="killed", model=tiny_model, data=clips, out=tmp_path / "runs", steps=400)
    job_id = client.post("/api/jobs", json={"yaml": text, "queue": True}).json()["id"]
    job = _job(client, job_id)
    assert job["status"] == "running"
    client.__exit__(None, None, None)  # the UI is gone...
    os.killpg(job["pid"], signal.SIGKILL)  # ...and the job's whole process group is killed (like a crash)
    wait_for(
        lambda: _gone(job["pid"]),
        30,
        "the killed process to vanish",
    )
    client = make_client()  # startup reconciles before the first request
    after = _job(client, job_id)
    assert after["status"] == "failed" and "without an exit status" in after["error"]

    # A pid that now belongs to another process (reboot, pid reuse) must not look like our job.
    store = client.app.state.ctx.store
    store.update(job_id, status="running", pid=os.getpid(), pid_create_time=1.0, error=None)
    assert _job(client, job_id)["status"] == "failed"


def test_stop_escalates_to_sigkill_for_a_process_that_ignores_signals(
    tmp_path: Path, tiny_model: Path, clips: Path
) -> None:
    """The runner's escalation, checked with a process that ignores SIGINT/SIGTERM (the trainer never does)."""
    import time

    from cadence.ui.runner import JobRunner
    from cadence.ui.store import Job

    home = tmp_path / "home"
    store = JobStore(home / "cadence.db")
    ready = tmp_path / "traps_set"
    stubborn = ("sh", "-c", f'trap "" INT TERM; touch {ready}; while true; do sleep 0.1; done', "stubborn")
    runner = JobRunner(store, home, train_cmd=stubborn, stop_timeout=1.0, gpus=[])
    store.add(
        Job(
            id="j1",
            name="stubborn",
            status="queued",
            device="cpu",
            config_yaml="",
            config_path=str(tmp_path / "c.yaml"),
            run_dir=str(tmp_path / "run"),
        )
    )
    runner.tick()
    job = store.get("j1")
    assert job.status == "running" and runner.is_alive(job)
    wait_for(ready.exists, 30, "the shell to install its traps")
    assert runner.stop("j1") == "stopping"
    # the UI was suspended far past every timeout: the late tick sends SIGTERM, not SIGKILL at once
    store.update("j1", stop_requested_at=time.time() - 100)
    runner.tick()
    assert store.get("j1").stop_stage == 2 and runner.is_alive(store.get("j1"))
    stages = []
    deadline = time.monotonic() + 20
    while store.get("j1").status == "stopping" and time.monotonic() < deadline:
        runner.tick()
        stages.append(store.get("j1").stop_stage)
        time.sleep(0.2)
    final = store.get("j1")
    assert final.status == "stopped", final
    assert stages[0] == 2 and 3 in stages  # SIGKILL 1 s after the SIGTERM
    assert _gone(final.pid)


def test_a_trainer_outliving_its_killed_wrapper_stays_running_and_stoppable(
    make_client, tiny_model: Path, clips: Path, tmp_path: Path
) -> None:
    client = make_client()
    text = config_yaml(name="orphan", model=tiny_model, data=clips, out=tmp_path / "runs", steps=4000)
    job_id = client.post("/api/jobs", json={"yaml": text, "queue": True}).json()["id"]
    job = _job(client, job_id)
    runner = client.app.state.ctx.runner
    child_file = runner.job_dir(job_id) / "child_pid"
    wait_for(child_file.is_file, 30, "the wrapper to start the trainer")
    trainer = int(child_file.read_text())
    os.kill(job["pid"], signal.SIGKILL)  # the wrapper only: the trainer keeps training
    wait_for(
        lambda: _gone(job["pid"]),
        30,
        "the wrapper to die",
    )
    runner.reconcile()
    assert _job(client, job_id)["status"] == "running", "the trainer still runs"
    assert client.post(f"/api/jobs/{job_id}/start").status_code == 409  # no second trainer
    assert client.post(f"/api/jobs/{job_id}/stop").status_code == 200
    wait_for(
        lambda: _gone(trainer),
        60,
        "the trainer to stop on the group signal",
    )
    runner.reconcile()
    assert _job(client, job_id)["status"] == "stopped"
