"""Headless Chromium (Debian package, Playwright) against a real uvicorn server: caption a dataset from the
datasets page with the real `cadence caption` on a tiny Qwen2.5-VL (queued on the CPU slot), watch the job
finish, see the captions appear in the editors, edit one and save it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import Page, expect

from cadence.data.synthetic import render_frame, write_clip
from cadence.models.tiny_vlm import write_tiny_vlm
from cadence.ui.app import create_app

from .conftest import TOKEN, _kill_leftovers
from .test_browser import DOC_SHOTS, _free_port, page  # noqa: F401 - `page` is the shared browser fixture


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder / "clip_0.mp4", 96, 64, 17, 16, seed=0)
    write_clip(folder / "clip_1.mp4", 64, 96, 17, 16, seed=1)
    Image.fromarray(render_frame(3, 96, 64, seed=5)).save(folder / "still_0.png")
    return folder


@pytest.fixture
def server(home: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("CADENCE_DATASET_ROOTS", str(dataset))
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


@pytest.mark.slow
def test_caption_a_dataset_from_the_datasets_page(
    server: str,
    page: Page,  # noqa: F811 - the fixture imported from test_browser
    dataset: Path,
    tmp_path: Path,
) -> None:
    model = write_tiny_vlm(tmp_path / "vlm", "qwen2_5_vl", seed=0)
    page.goto(server + "/login")
    page.fill("#token", TOKEN)
    page.click("#login-button")
    page.goto(server + "/datasets")
    expect(page.locator("#items figure")).to_have_count(3)
    expect(page.locator("#items textarea").first).to_have_value("")

    page.fill("#cap-model", str(model))
    page.fill("#cap-frames", "2")
    page.fill("#cap-tokens", "8")
    page.fill("#cap-trigger", "sks")
    page.select_option("#cap-device", "cpu")
    page.click("#cap-start")
    expect(page.locator("#cap-status .status")).to_have_text("finished", timeout=180_000)
    expect(page.locator("#cap-progress")).to_contain_text("3 / 3 files: 3 written, 0 kept, 0 skipped")
    figure = page.locator("#items figure", has=page.locator("img")).first
    media = Path(figure.get_attribute("data-path"))
    written = media.with_suffix(".txt").read_text().strip()
    assert written.startswith("sks")
    expect(figure.locator("textarea")).to_have_value(written + "\n", timeout=20_000)  # reloaded at the end
    shots = DOC_SHOTS if os.environ.get("CADENCE_UPDATE_SCREENSHOTS") else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "datasets_captioned.png"), full_page=True)

    figure.locator("textarea").fill("sks, a disc drifting to the right")  # editable afterwards
    figure.locator("button", has_text="Save caption").click()
    expect(figure).to_contain_text("saved")
    assert media.with_suffix(".txt").read_text() == "sks, a disc drifting to the right"
