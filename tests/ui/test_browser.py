"""Headless Chromium (Debian package, driven by Playwright) against a real uvicorn server and the real trainer:
log in, see form errors at their fields, create a tiny job, watch its charts update, stop it, see the
checkpoint. Screenshots of the job page go to a temporary folder; set CADENCE_UPDATE_SCREENSHOTS=1 to
refresh the ones in docs/screenshots/ (so a test run never dirties the checkout)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from cadence.ui.app import create_app

from .conftest import TOKEN, _kill_leftovers, config_yaml

CHROMIUM = "/usr/bin/chromium"
DOC_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(home: Path) -> Iterator[str]:
    app = create_app(home, token=TOKEN, stop_timeout=60, scheduler_interval=0.5, gpus=[])
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    _kill_leftovers(home)


@pytest.fixture
def page() -> Iterator[Page]:
    assert Path(CHROMIUM).exists(), "run scripts/install_browser.sh (Debian chromium) first"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        outside: list[str] = []
        pg.on(
            "request",
            lambda r: (
                outside.append(r.url)
                if not r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                else None
            ),
        )
        yield pg
        assert outside == [], f"the UI made outside requests: {outside}"
        browser.close()


def _points(page: Page, chart: str) -> int:
    return int(page.get_attribute(f"#chart-{chart}", "data-points") or 0)


def _wait_points(page: Page, chart: str, at_least: int, timeout: float) -> int:
    """Poll from Python: the page's CSP forbids eval, which page.wait_for_function would need."""
    deadline = time.monotonic() + timeout
    while (n := _points(page, chart)) < at_least:
        assert time.monotonic() < deadline, f"chart {chart} stuck at {n} points (< {at_least})"
        page.wait_for_timeout(500)
    return n


def test_login_create_watch_stop(
    server: str, page: Page, tiny_model: Path, clips: Path, tmp_path: Path
) -> None:
    page.goto(server + "/")
    expect(page).to_have_url(server + "/login")
    page.fill("#token", "wrong")
    page.click("#login-button")
    expect(page.locator("#login-error")).to_be_visible()
    page.fill("#token", TOKEN)
    page.click("#login-button")
    expect(page).to_have_url(server + "/")

    # Form errors show at their fields.
    page.fill("#f-name", "bad/name")
    page.fill("#f-model", str(tiny_model))
    page.fill("#f-data", str(clips))
    page.fill("#f-frames", "6")
    page.click("#create-button")
    expect(page.locator('.err[data-for="name"]')).to_contain_text("plain file name")
    expect(page.locator('.err[data-for="datasets[0].num_frames"]')).to_contain_text("4k+1")

    # A tiny real job from YAML, queued at once.
    page.click("#tab-yaml")
    page.fill(
        "#yaml-text",
        config_yaml(
            name="browser", model=tiny_model, data=clips, out=tmp_path / "runs", steps=400, save_every=1000
        ),
    )
    page.click("#create-button")
    page.wait_for_url(server + "/jobs/*")
    expect(page.locator("#job-status .status")).to_have_text("running", timeout=30_000)

    first = _wait_points(page, "loss", 3, 180)
    _wait_points(page, "loss", first + 4, 120)  # the chart keeps growing while the job runs
    assert _points(page, "stability") > 0 and _points(page, "lr") > 0
    expect(page.locator("#chart-loss canvas")).to_have_count(1)
    shots = DOC_SHOTS if os.environ.get("CADENCE_UPDATE_SCREENSHOTS") else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "job_running.png"), full_page=True)

    page.click("#btn-stop")
    expect(page.locator("#job-status .status")).to_have_text("stopped", timeout=120_000)
    expect(page.locator("#checkpoints tr.checkpoint").first).to_be_visible(timeout=20_000)
    expect(page.locator("#checkpoints")).to_contain_text("browser_")
    expect(page.locator("#log")).to_contain_text("SIGINT")
    page.screenshot(path=str(shots / "job_stopped.png"), full_page=True)

    # Datasets page: the job's dataset root, media with buckets, caption edit saved atomically.
    page.goto(server + "/datasets")
    figure = page.locator("#items figure").first
    expect(figure).to_contain_text("bucket", timeout=60_000)
    expect(page.locator("#items figure")).to_have_count(4)
    media_path = figure.get_attribute("data-path")
    original = Path(media_path).with_suffix(".txt").read_text()
    figure.locator("textarea").fill("an edited caption from the browser")
    figure.locator("button").click()
    expect(figure).to_contain_text("saved")
    assert Path(media_path).with_suffix(".txt").read_text() == "an edited caption from the browser"
    page.screenshot(path=str(shots / "datasets.png"), full_page=False)
    Path(media_path).with_suffix(".txt").write_text(original)  # the clips fixture is shared by the session
