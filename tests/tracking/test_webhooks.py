"""Webhook deliveries to a real receiver on 127.0.0.1: both forms, filters, retries, and a caller never held up."""

from __future__ import annotations

import base64
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from cadence.config.schema import LoggingConfig
from cadence.sampling.writers import write_png
from cadence.tracking import RunInfo
from cadence.tracking.secrets import Redactor
from cadence.tracking.webhooks import WebhookSink

from .servers import WebhookReceiver


@pytest.fixture
def receiver():
    server = WebhookReceiver()
    yield server
    if server.hold is not None:
        server.hold.set()
    server.close()


def _sink(entries: list, tmp_path: Path) -> WebhookSink:
    hooks = LoggingConfig(webhooks=entries).webhooks
    sink = WebhookSink(hooks)
    urls = [h.webhook_url for h in hooks]
    sink.open(RunInfo(name="job", run_dir=tmp_path, config={}, total_steps=10, redactor=Redactor(urls)), None)
    return sink


def test_raw_and_discord_forms_carry_each_event(receiver: WebhookReceiver, tmp_path: Path) -> None:
    frame = tmp_path / "samples" / "000000005_00.png"
    frame.parent.mkdir()
    write_png(frame, np.full((8, 8, 3), 200, dtype=np.uint8))
    entries = [
        {"webhook_type": "raw", "callback_url": f"{receiver.url}/raw", "auth_token": "key-123"},
        {"webhook_type": "discord", "webhook_url": f"{receiver.url}/discord", "message_prefix": "wan-motion"},
    ]
    sink = _sink(entries, tmp_path)
    sink.event("start", {"step": 0, "total_steps": 10, "resumed": False, "message": "started, 10 steps"})
    sink.event(
        "sample", {"step": 5, "files": [str(frame), str(frame.with_suffix(".mp4"))], "message": "1 sample"}
    )
    sink.event("failure", {"step": 7, "error": "boom", "message": "crashed at step 7: boom"})
    sink.close()

    raw = receiver.posts("/raw")
    assert [r.json()["event"] for r in raw] == ["start", "sample", "failure"]
    start, sample, failure = (r.json() for r in raw)
    assert (
        start["type"] == "cadence.start" and start["job_id"] == "job" and start["data"]["total_steps"] == 10
    )
    assert sample["data"]["files"] == ["samples/000000005_00.png", "samples/000000005_00.mp4"]  # run-relative
    assert base64.b64decode(sample["images"][0]["base64"]) == frame.read_bytes()
    assert (failure["severity"], failure["step"], failure["data"]["error"]) == ("error", 7, "boom")
    assert all(r.headers["x-api-key"] == "key-123" for r in raw)

    discord = receiver.posts("/discord")
    assert len(discord) == 3
    assert discord[0].json() == {"content": "`(wan-motion)` **Training started** (step 0): started, 10 steps"}
    form = discord[1].form()  # samples go as Discord's multipart form: payload_json + files[n]
    assert json.loads(form["payload_json"])["content"].startswith(
        "`(wan-motion)` **Samples written** (step 5)"
    )
    assert form["files[0]"] == ("000000005_00.png", frame.read_bytes())
    assert "x-api-key" not in discord[0].headers


def test_log_level_and_event_filters(receiver: WebhookReceiver, tmp_path: Path) -> None:
    entries = [
        {"webhook_url": f"{receiver.url}/warnings", "log_level": "warning"},
        {"webhook_url": f"{receiver.url}/checkpoints", "events": ["checkpoint"]},
    ]
    sink = _sink(entries, tmp_path)
    for kind in ("start", "checkpoint", "health_warning", "alpha_phase", "finish"):
        sink.event(kind, {"step": 4, "message": kind})
    sink.event("publish", {"step": None, "status": "publish_failed", "message": "upload failed"})
    sink.close()
    assert [r.json()["event"] for r in receiver.posts("/warnings")] == ["health_warning", "publish"]
    assert [r.json()["event"] for r in receiver.posts("/checkpoints")] == ["checkpoint"]


def test_a_failed_post_is_retried_and_a_dead_receiver_is_reported_without_its_url(
    receiver: WebhookReceiver, tmp_path: Path, caplog
) -> None:
    receiver.fail["/flaky"] = 1  # one HTTP 500, then it answers
    dead = "http://127.0.0.1:9/hook/SECRET-token-xyz"  # discard port: connection refused
    sink = _sink([f"{receiver.url}/flaky", dead], tmp_path)
    with caplog.at_level(logging.WARNING, logger="cadence.tracking.webhooks"):
        sink.event("checkpoint", {"step": 3, "files": [], "message": "saved"})
        sink.close()
    assert len(receiver.posts("/flaky")) == 2 and receiver.posts("/flaky")[-1].json()["step"] == 3
    assert "webhook 2 (raw, 127.0.0.1): could not deliver the checkpoint event" in caplog.text
    assert "1 of 1 events not delivered" in caplog.text and "SECRET" not in caplog.text


def test_a_receiver_that_hangs_never_holds_up_the_caller(receiver: WebhookReceiver, tmp_path: Path) -> None:
    receiver.hold = threading.Event()  # every answer waits until released
    sink = _sink([f"{receiver.url}/slow", f"{receiver.url}/other"], tmp_path)
    for step in range(300):  # more than the queue holds
        sink.event("checkpoint", {"step": step, "files": [], "message": "saved"})
    assert not receiver.hold.is_set()  # all 300 calls returned while the receiver answered nothing
    slow = sink.receivers[0]
    assert slow.worker.dropped > 0  # a full queue drops (and counts) instead of blocking
    receiver.hold.set()
    sink.close()
    delivered = receiver.posts("/slow")
    assert len(delivered) == 300 - slow.worker.dropped
    assert [r.json()["step"] for r in delivered] == sorted(r.json()["step"] for r in delivered)


def test_debug_logging_of_the_http_library_never_shows_a_webhook_token(
    receiver: WebhookReceiver, tmp_path: Path, caplog
) -> None:
    from cadence.tracking.secrets import Redactor, redact_logs

    url = f"{receiver.url}/hooks/SECRET-token-in-the-path"
    remove = redact_logs(Redactor([url]))  # what RunRecorder.open installs on the root handlers
    try:
        with caplog.at_level(logging.DEBUG):
            sink = _sink([url], tmp_path)
            sink.event("finish", {"step": 3, "status": "completed", "message": "finished"})
            sink.close()
    finally:
        remove()
    assert receiver.posts("/hooks/SECRET-token-in-the-path")  # it was sent ...
    assert "urllib3" in caplog.text and '"POST <redacted> HTTP/1.1" 204' in caplog.text  # ... and logged
    assert "SECRET" not in caplog.text
