"""File and media routes serve only files inside run/job folders and dataset roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadence.ui import context
from cadence.ui.files import FileAccessError, resolve_safe

from .conftest import config_yaml


@pytest.fixture
def served(make_client, tiny_model: Path, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(Path(__file__).with_name("__init__.py").read_bytes() or b"x")
    (data / "a.txt").write_text("old caption")
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (data / "link_out.png").symlink_to(secret)
    (data / "link_in.png").symlink_to(data / "a.png")
    client = make_client()
    text = config_yaml(name="files", model=tiny_model, data=data, out=tmp_path / "runs")
    assert client.post("/api/jobs", json={"yaml": text}).status_code == 201
    return client, data, secret


def test_traversal_attempts_are_refused(served) -> None:
    client, data, secret = served
    ok = client.get("/api/media", params={"path": str(data / "a.png")})
    assert ok.status_code == 200
    assert client.get("/api/media", params={"path": str(data / "link_in.png")}).status_code == 200
    attempts = {
        "dotdot": f"{data}/../secret.txt",
        "dotdot deep": f"{data}/../../../../etc/passwd",
        "absolute outside": str(secret),
        "etc": "/etc/passwd",
        "symlink out": str(data / "link_out.png"),
        "relative": "secret.txt",
        "backslash dotdot": f"{data}\\..\\secret.txt",
    }
    for label, path in attempts.items():
        for route in ("/api/files", "/api/media"):
            r = client.get(route, params={"path": path})
            assert r.status_code in (400, 403, 404), (label, route, r.status_code)
            assert "top secret" not in r.text and "root:" not in r.text, label
    # Percent-encoded (and double-encoded) traversal written straight into the URL.
    for raw in (
        f"/api/files?path={data}/%2e%2e/secret.txt",
        f"/api/files?path={data}%2F..%2Fsecret.txt",
        f"/api/files?path={data}/%252e%252e/secret.txt",
        "/api/files?path=%2Fetc%2Fpasswd",
        "/api/files/..%2f..%2fetc/passwd",
        "/static/..%2f..%2fstore.py",
        "/static/../app.py",
    ):
        r = client.get(raw)
        assert r.status_code in (400, 403, 404), (raw, r.status_code)
        assert "top secret" not in r.text and "root:" not in r.text and "import" not in r.text, raw


def test_resolve_safe_rules(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.txt").write_text("x")
    assert resolve_safe(str(root / "sub" / "f.txt"), [root]) == (root / "sub" / "f.txt").resolve()
    for bad, status in (
        (f"{root}/sub/../sub/f.txt", 400),
        ("", 400),
        (f"{root}/f\0.txt", 400),
        (str(root / "missing"), 404),
        (str(root / "sub"), 404),
        ("/etc/hostname", 403),
    ):
        with pytest.raises(FileAccessError) as err:
            resolve_safe(bad, [root])
        assert err.value.status == status, bad


def test_captions_buckets_and_upload_limit(served, monkeypatch: pytest.MonkeyPatch) -> None:
    client, data, _ = served
    roots = client.get("/api/datasets").json()["roots"]
    assert str(data.resolve()) in roots
    put = client.put("/api/datasets/caption", json={"path": str(data / "a.png"), "text": "new caption"})
    assert put.status_code == 200 and (data / "a.txt").read_text() == "new caption"
    assert not [p for p in data.iterdir() if p.name.startswith(".a.txt")]  # no temp file left behind
    outside = client.put("/api/datasets/caption", json={"path": str(data / "link_out.png"), "text": "x"})
    assert outside.status_code == 403

    monkeypatch.setattr(context, "MAX_UPLOAD_BYTES", 1000)
    from cadence.ui import api_files

    monkeypatch.setattr(api_files, "MAX_UPLOAD_BYTES", 1000)
    small = client.post(
        "/api/datasets/upload", params={"root": str(data), "filename": "up.png"}, content=b"p" * 500
    )
    assert small.status_code == 201 and (data / "up.png").stat().st_size == 500
    big = client.post(
        "/api/datasets/upload", params={"root": str(data), "filename": "big.png"}, content=b"p" * 5000
    )
    assert big.status_code == 413 and not (data / "big.png").exists()
    sneaky = client.post(
        "/api/datasets/upload", params={"root": str(data), "filename": "../x.png"}, content=b"p"
    )
    assert sneaky.status_code == 400
    huge_json = client.post(
        "/api/jobs",
        content=b"{" + b" " * (3 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert huge_json.status_code == 413


def test_caption_edits_use_the_datasets_caption_ext(make_client, tiny_model: Path, tmp_path: Path) -> None:
    """The caption a user edits is the file training reads (datasets[].caption_ext), not always .txt."""
    import yaml

    data = tmp_path / "data_ext"
    data.mkdir()
    (data / "b.png").write_bytes(b"x")
    (data / "b.caption").write_text("old")
    client = make_client()
    job = yaml.safe_load(config_yaml(name="ext", model=tiny_model, data=data, out=tmp_path / "runs"))
    job["datasets"][0]["caption_ext"] = "caption"
    assert client.post("/api/jobs", json={"yaml": yaml.safe_dump(job)}).status_code == 201
    listing = client.get("/api/datasets/files", params={"root": str(data)}).json()["items"]
    assert [(i["name"], i["caption"]) for i in listing] == [("b.png", "old")]
    put = client.put("/api/datasets/caption", json={"path": str(data / "b.png"), "text": "new"})
    assert put.status_code == 200 and (data / "b.caption").read_text() == "new"
    assert not (data / "b.txt").exists()
