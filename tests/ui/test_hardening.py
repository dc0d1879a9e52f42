"""What the UI refuses or protects: cross-site and rebinding requests, over-broad roots, name races, file
overwrites, scripts in served files; and what Delete keeps."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import yaml

from .conftest import TOKEN, job_config, wait_for


def _yaml(**kwargs) -> str:
    return yaml.safe_dump(job_config(**kwargs), sort_keys=False)


def test_cross_site_and_rebinding_requests_are_refused(
    make_client, tiny_model: Path, clips: Path, tmp_path: Path
):
    client = make_client()
    text = _yaml(name="x", model=tiny_model, data=clips, out=tmp_path / "runs", steps=2)
    evil = client.post("/api/jobs", json={"yaml": text}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
    null = client.post(
        "/api/jobs", json={"yaml": text}, headers={"Origin": "null"}
    )  # sandboxed attacker frame
    assert null.status_code == 403
    rebound = client.get("/api/jobs", headers={"Host": "evil.example:8675"})
    assert rebound.status_code == 403 and "localhost only" in rebound.json()["detail"]
    assert (
        client.post("/api/jobs", json={"yaml": text}, headers={"Origin": "http://localhost"}).status_code
        == 201
    )
    assert client.get("/", headers={"Host": "127.0.0.1:8675"}).status_code == 200
    authed = make_client(token=TOKEN)  # with a token: any name of the machine, and a proxy in front
    bearer = {"Authorization": f"Bearer {TOKEN}", "Host": "gpu-box.lan:8675"}
    assert authed.get("/api/jobs", headers=bearer).status_code == 200
    proxied = {"Host": "127.0.0.1:8675", "Origin": "https://cadence.example.org"}  # nginx's default Host
    login = authed.post("/login", data={"token": TOKEN}, headers=proxied, follow_redirects=False)
    assert login.status_code == 303
    chunked = client.post(
        "/api/jobs", content=iter([text.encode()]), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 411


def test_roots_that_would_expose_the_machine_are_refused(
    make_client, tiny_model: Path, clips: Path, tmp_path: Path
):
    client = make_client()
    etc = job_config(name="etc", model=tiny_model, data=clips, out=Path("/"), steps=2)
    response = client.post("/api/jobs", json={"yaml": yaml.safe_dump(etc)})
    assert response.status_code == 422 and response.json()["issues"][0]["path"] == "training_folder"
    root_data = job_config(name="d", model=tiny_model, data=Path("/"), out=tmp_path / "runs", steps=2)
    response = client.post("/api/jobs", json={"yaml": yaml.safe_dump(root_data)})
    assert response.status_code == 422 and response.json()["issues"][0]["path"] == "datasets[0].folder_path"
    assert client.get("/api/files", params={"path": "/etc/hostname"}).status_code in (403, 404)


def test_one_name_wins_a_race(make_client, tiny_model: Path, clips: Path, tmp_path: Path):
    client = make_client()
    text = _yaml(name="racer", model=tiny_model, data=clips, out=tmp_path / "runs", steps=2)
    codes: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(client.post("/api/jobs", json={"yaml": text}).status_code)
        )
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [201] + [422] * 5
    assert [j["name"] for j in client.get("/api/jobs").json()["jobs"]] == ["racer"]


def test_delete_keeps_a_run_folder_inside_the_job_folder(
    make_client, tiny_model: Path, clips: Path, home: Path
):
    """A relative training_folder resolves beside the job's config.yaml, inside the UI's job folder."""
    client = make_client()
    config = job_config(
        name="rel[v2]", model=tiny_model, data=clips, out=Path("output"), steps=3, save_every=1
    )
    job = client.post("/api/jobs", json={"yaml": yaml.safe_dump(config), "queue": True}).json()
    run_dir = Path(job["run_dir"])
    assert run_dir.is_relative_to(home / "jobs" / job["id"])
    wait_for(lambda: client.get(f"/api/jobs/{job['id']}").json()["status"] == "finished", 120, "the run")
    names = [c["name"] for c in client.get(f"/api/jobs/{job['id']}/artifacts").json()["checkpoints"]]
    assert names and all(n.startswith("rel[v2]_") for n in names)  # a name with glob characters
    deleted = client.delete(f"/api/jobs/{job['id']}").json()
    assert deleted["kept"] == str(run_dir)
    assert sorted(p.name for p in run_dir.glob("*.safetensors")) == sorted(names)
    assert not (home / "jobs" / job["id"] / "config.yaml").exists()
    gone = client.post("/api/jobs", json={"yaml": yaml.safe_dump({**config, "name": "gone"})}).json()
    shutil.rmtree(home / "jobs" / gone["id"])  # its folder removed by hand
    assert client.delete(f"/api/jobs/{gone['id']}").status_code == 200


def test_uploads_never_overwrite_and_served_files_are_sandboxed(
    make_client, tiny_model: Path, tmp_path: Path
):
    client = make_client()
    root = tmp_path / "data"
    root.mkdir()
    existing = root / "a.png"
    existing.write_bytes(b"\x89PNG original")
    config = job_config(name="up", model=tiny_model, data=root, out=tmp_path / "runs", steps=2)
    assert client.post("/api/jobs", json={"yaml": yaml.safe_dump(config)}).status_code == 201
    response = client.post(
        "/api/datasets/upload", params={"root": str(root), "filename": "a.png"}, content=b"x" * 9
    )
    assert response.status_code == 409 and existing.read_bytes() == b"\x89PNG original"
    page = root / "evil.xhtml"
    page.write_text('<html xmlns="http://www.w3.org/1999/xhtml"><script src="x.js"/></html>')
    served_page = client.get("/api/files", params={"path": str(page)})
    assert served_page.status_code == 200 and served_page.headers["content-security-policy"] == "sandbox"


def test_bad_form_resolution_is_a_field_error(make_client, tiny_model: Path, clips: Path) -> None:
    client = make_client()
    form = {"name": "r", "model.name_or_path": str(tiny_model), "model.arch": "wan22_14b_i2v"}
    form.update({"datasets[0].folder_path": str(clips), "datasets[0].resolution": "512.5"})
    response = client.post("/api/jobs", json={"form": form})
    assert response.status_code == 422 and response.json()["issues"][0]["path"] == "datasets[0].resolution"
