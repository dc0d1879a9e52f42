"""CADENCE_AUTH: every route in the OpenAPI schema, plus files/media/static/openapi, needs the token."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from cadence.ui.auth import COOKIE, OPEN_PATHS
from cadence.ui.server import refuse_reason, ui_command

from .conftest import TOKEN, config_yaml


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "abc123", path)


def test_every_route_refuses_without_the_token(
    make_client, tiny_model: Path, clips: Path, tmp_path: Path
) -> None:
    client = make_client(token=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    schema = client.get("/openapi.json", headers=bearer)
    assert schema.status_code == 200
    routes = [(m.upper(), _concrete(p)) for p, ops in schema.json()["paths"].items() for m in ops]
    assert len(routes) >= 20
    routes += [
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/redoc"),
        ("GET", "/static/js/job.js"),
        ("GET", "/static/vendor/uPlot.iife.min.js"),
        ("GET", "/api/files?path=/etc/passwd"),
        ("GET", "/api/media?path=/etc/passwd"),
    ]
    assert OPEN_PATHS == {"/login", "/static/login.css"}  # the only open doors, checked separately below
    for method, path in routes:
        if path in OPEN_PATHS:
            continue
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Cookie": f"{COOKIE}={TOKEN}"},
        ):
            r = client.request(
                method, path, headers={**headers, "accept": "application/json"}, follow_redirects=False
            )
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert "abc123" not in r.text and "root:" not in r.text
    page = client.get("/jobs/abc", headers={"accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"

    # With the token the API works (create a job so data exists), by header or by the login cookie.
    text = config_yaml(name="authjob", model=tiny_model, data=clips, out=tmp_path)
    assert client.post("/api/jobs", json={"yaml": text}, headers=bearer).status_code == 201
    assert client.get("/api/jobs", headers=bearer).json()["jobs"][0]["name"] == "authjob"


def test_login_sets_a_derived_httponly_strict_cookie(make_client) -> None:
    client = make_client(token=TOKEN)
    assert client.get("/login").status_code == 200
    assert client.get("/static/login.css").status_code == 200
    bad = client.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert (
        bad.status_code == 401
        and "Wrong token" in bad.text
        and COOKIE not in bad.headers.get("set-cookie", "")
    )
    good = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert good.status_code == 303
    cookie = good.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie
    assert client.get("/api/jobs").status_code == 200  # the client kept the cookie
    assert client.get("/openapi.json").status_code == 200
    client.cookies.clear()
    assert client.get("/api/jobs").status_code == 401


def test_logout_ends_the_session_even_for_a_copied_cookie(make_client, home: Path) -> None:
    """A cookie copied before logout (another tab, a stolen copy) stops working when the user logs out."""
    client = make_client(token=TOKEN)
    client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    copied = client.cookies.get(COOKIE)
    assert copied and client.get("/api/jobs").status_code == 200
    assert (home / "session_secret").stat().st_mode & 0o077 == 0  # the secret is private to its owner
    out = client.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    replay = make_client(token=TOKEN)
    replay.cookies.set(COOKIE, copied)
    assert replay.get("/api/jobs", headers={"accept": "application/json"}).status_code == 401
    anonymous = make_client(token=TOKEN)  # logging out needs a session: nobody else can end them
    assert anonymous.post("/logout", follow_redirects=False).status_code == 401
    again = make_client(token=TOKEN)
    again.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert again.get("/api/jobs").status_code == 200


def test_session_cookie_expires(home: Path) -> None:
    from cadence.ui.auth import Sessions

    fresh = Sessions(home, TOKEN, days=1.0)
    assert fresh.valid(fresh.issue())
    expired = Sessions(home, TOKEN, days=-1.0)
    assert not fresh.valid(expired.issue())  # same secret and token, expiry in the past
    assert not Sessions(home, "another-token").valid(fresh.issue())
    assert not fresh.valid("not-a-cookie") and not fresh.valid("99999999999.")


def test_docs_pages_are_off_because_they_need_a_cdn(make_client) -> None:
    client = make_client()
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    html = client.get("/jobs/x").text + client.get("/").text
    assert "http://" not in html and "https://" not in html  # every asset is local


def test_non_loopback_bind_needs_auth(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert refuse_reason("127.0.0.1", None) is None
    assert refuse_reason("localhost", None) is None
    assert refuse_reason("::1", None) is None
    assert refuse_reason("0.0.0.0", TOKEN) is None
    assert "CADENCE_AUTH" in refuse_reason("vm.example", None)  # a name, even one resolving to 127.0.0.1
    assert "CADENCE_AUTH" in refuse_reason("0.0.0.0", None)
    monkeypatch.delenv("CADENCE_AUTH", raising=False)
    code = ui_command(argparse.Namespace(host="0.0.0.0", port=0, home=None))
    assert code == 2 and "refusing to serve on 0.0.0.0" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["week", "0", "-2", "nan", "inf"])
def test_bad_session_days_is_a_message_not_a_traceback(bad, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CADENCE_UI_SESSION_DAYS", bad)
    monkeypatch.setenv("CADENCE_AUTH", TOKEN)
    code = ui_command(argparse.Namespace(host="127.0.0.1", port=0, home=None))
    assert (
        code == 2 and "CADENCE_UI_SESSION_DAYS must be a positive number of days" in capsys.readouterr().err
    )
