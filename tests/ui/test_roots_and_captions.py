"""Roots the UI must never serve, captions that must never touch media or leak files, and delete
serialized with start (issue: reliability round two)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from cadence.ui.roots import root_problem

from .conftest import job_config, wait_for


@pytest.mark.parametrize(
    "folder", ["/", "/var", "/run", "/home", "/opt", "/srv", "/tmp", "/etc/ssl", "/var/lib/x", "/usr/share"]
)
def test_machine_folders_are_too_broad(folder: str, home: Path) -> None:
    assert root_problem(Path(folder), home) is not None


def test_home_folders_hidden_folders_and_the_ui_home(tmp_path: Path) -> None:
    user_home = Path.home()
    ui_home = tmp_path / "ui"
    assert root_problem(user_home, ui_home)  # a home folder (or /root: top-level) itself
    assert "hidden folder" in root_problem(user_home / ".ssh", ui_home)
    assert "hidden folder" in root_problem(user_home / ".config" / "x", ui_home)
    assert "UI's own home" in root_problem(tmp_path, ui_home)
    assert root_problem(ui_home / "jobs" / "abc" / "output", ui_home) is None  # the UI's own run folders
    looks_like_home = tmp_path / "other"
    (looks_like_home / ".ssh").mkdir(parents=True)
    assert ".ssh" in root_problem(looks_like_home, ui_home)
    project = tmp_path / "projects" / "clips"
    project.mkdir(parents=True)
    assert root_problem(project, ui_home) is None


def test_broad_roots_are_refused_at_job_creation(make_client, tiny_model: Path, clips: Path, tmp_path: Path):
    client = make_client()
    for folder, key in ((Path("/run"), "training_folder"), (Path("/opt"), "datasets[0].folder_path")):
        out = folder if key == "training_folder" else tmp_path / "runs"
        data = folder if key != "training_folder" else clips
        config = job_config(name="x", model=tiny_model, data=data, out=out, steps=2)
        response = client.post("/api/jobs", json={"yaml": yaml.safe_dump(config)})
        assert response.status_code == 422, response.text
        assert response.json()["issues"][0]["path"] == key


def test_a_symlinked_caption_pointing_outside_is_not_read(
    make_client, tiny_model: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOP SECRET")
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.png").write_bytes(b"\x89PNG")
    (root / "a.txt").symlink_to(secret)
    (root / "b.png").write_bytes(b"\x89PNG")
    (root / "b.txt").write_text("a plain caption")
    client = make_client()
    config = job_config(name="cap", model=tiny_model, data=root, out=tmp_path / "runs", steps=2)
    assert client.post("/api/jobs", json={"yaml": yaml.safe_dump(config)}).status_code == 201
    listing = client.get("/api/datasets/files", params={"root": str(root)})
    assert listing.status_code == 200 and "TOP SECRET" not in listing.text
    captions = {item["name"]: item["caption"] for item in listing.json()["items"]}
    assert captions == {"a.png": None, "b.png": "a plain caption"}


def test_caption_editor_never_writes_media(make_client, tiny_model: Path, tmp_path: Path) -> None:
    """Even when the config on disk is edited to a media caption_ext after the job was created."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "clip.png").write_bytes(b"\x89PNG image")
    (root / "clip.mp4").write_bytes(b"video bytes")
    client = make_client()
    config = job_config(name="cap2", model=tiny_model, data=root, out=tmp_path / "runs", steps=2)
    job = client.post("/api/jobs", json={"yaml": yaml.safe_dump(config)}).json()
    ok = client.put("/api/datasets/caption", json={"path": str(root / "clip.png"), "text": "a cat"})
    assert ok.status_code == 200 and (root / "clip.txt").read_text() == "a cat"
    from cadence.ui.api_files import caption_target

    with pytest.raises(Exception) as refused:
        caption_target(root / "clip.png", "mp4")
    assert "media file" in str(refused.value.detail)
    assert (root / "clip.mp4").read_bytes() == b"video bytes"
    assert job["id"]


def test_delete_of_a_queued_job_racing_the_scheduler_leaves_no_orphan(
    make_client, tiny_model: Path, clips: Path, tmp_path: Path, home: Path
) -> None:
    """Queue then delete at once, many times: every job is either deleted before it started (no process,
    no folder) or refused with 409 while it runs; never a running trainer whose job is gone."""
    import psutil

    client = make_client()
    outcomes: list[int] = []
    for i in range(6):
        config = job_config(name=f"race{i}", model=tiny_model, data=clips, out=tmp_path / "runs", steps=2)
        job = client.post("/api/jobs", json={"yaml": yaml.safe_dump(config)}).json()
        results: list[int] = []
        start = threading.Thread(
            target=lambda job=job, results=results: results.append(
                client.post(f"/api/jobs/{job['id']}/start").status_code
            )
        )
        start.start()
        outcomes.append(client.delete(f"/api/jobs/{job['id']}").status_code)
        start.join()
        if outcomes[-1] == 200:
            assert not (home / "jobs" / job["id"]).exists()
        else:
            assert outcomes[-1] in (404, 409)
    listed = {j["id"]: j for j in client.get("/api/jobs").json()["jobs"]}
    wait_for(
        lambda: all(
            j["status"] not in ("running", "stopping", "queued")
            for j in client.get("/api/jobs").json()["jobs"]
        ),
        60 + 60 * outcomes.count(409),  # each job that started runs to its end, one at a time on the CPU slot
        "remaining jobs to finish",
    )
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "cadence.ui.job_wrapper" in cmd and str(home) in cmd:
            job_id = Path(cmd.split("cadence.ui.job_wrapper", 1)[1].split()[0]).name
            assert job_id in listed, f"a trainer runs for deleted job {job_id}"
