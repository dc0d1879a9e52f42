"""The sink set isolates failures; the background worker never blocks its caller and counts what it drops."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cadence.metrics.tensorboard import TensorBoardLog
from cadence.tracking import RunInfo, SinkSet
from cadence.tracking.background import BackgroundWorker
from cadence.tracking.secrets import Redactor

SECRET = "https://hooks.example.com/T000/B000/abcdefSECRET"


class BrokenAt:
    """A sink whose `method` raises an error that quotes a secret URL (as network errors do)."""

    name = "broken"

    def __init__(self, method: str) -> None:
        self.method = method
        self.calls: list[str] = []

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any) -> Any:
            self.calls.append(method)
            if method == self.method:
                raise ConnectionError(f"Max retries exceeded with url: {SECRET}")
            return {} if method == "state_dict" else None

        return call


def _run(tmp_path: Path) -> RunInfo:
    return RunInfo(name="job", run_dir=tmp_path, config={}, total_steps=3, redactor=Redactor([SECRET]))


def test_a_failing_sink_is_reported_once_and_dropped_while_the_others_go_on(tmp_path: Path, caplog) -> None:
    sinks = SinkSet()
    broken = BrokenAt("write")
    board = TensorBoardLog(tmp_path / "tb")
    sinks.add(broken)
    sinks.add(board)
    sinks.open(_run(tmp_path), None)
    with caplog.at_level(logging.ERROR, logger="cadence.tracking.sinkset"):
        for step in (1, 2, 3):
            sinks.write({"step": step, "loss": 1.0 / step, "expert": "high_noise"})
        sinks.event("checkpoint", {"step": 3, "message": "saved job_000000003.safetensors"})
    sinks.close()

    assert sinks.names() == []  # closed
    assert broken.calls == ["open", "write", "close"]  # dropped at its first failure, closed once
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "broken failed in write()" in errors[0]
    assert "abcdefSECRET" not in errors[0] and "<redacted>" in errors[0]
    assert "abcdefSECRET" not in sinks.dropped["broken"]
    # the TensorBoard sink next to it kept every row and the event
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert "events/checkpoint/text_summary" in events.Tags()["tensors"]


def test_an_inactive_set_holds_no_sinks_and_a_failing_state_dict_is_not_fatal(tmp_path: Path) -> None:
    off = SinkSet(active=False)
    off.add(TensorBoardLog(tmp_path / "tb"))
    assert off.names() == []
    sinks = SinkSet()
    sinks.add(BrokenAt("state_dict"))
    sinks.open(_run(tmp_path), None)
    assert sinks.state_dict() == {} and sinks.names() == []


def test_tensorboard_thins_rows_and_purges_the_steps_a_resume_replays(tmp_path: Path) -> None:
    folder = tmp_path / "tb"
    first = TensorBoardLog(folder, every=2)
    first.open(_run(tmp_path), None)
    for step in range(1, 7):
        first.write({"step": step, "loss": float(step), "phase": "foundation", "nan_skipped": 0})
    first.close()
    resumed = TensorBoardLog(folder, every=2)
    resumed.open(_run(tmp_path), 2)  # the checkpoint at step 2: steps 3.. are written again
    for step in range(3, 7):
        resumed.write({"step": step, "loss": 10.0 * step})
    resumed.close()
    scalars = EventAccumulator(str(folder)).Reload().Scalars("loss")
    assert [(s.step, s.value) for s in scalars] == [(2, 2.0), (4, 40.0), (6, 60.0)]


def test_the_worker_never_blocks_and_counts_what_a_full_queue_drops(caplog) -> None:
    release = threading.Event()
    handled: list[int] = []

    def slow(item: int) -> None:
        release.wait(30)
        handled.append(item)

    worker = BackgroundWorker("test receiver", slow, capacity=4)
    with caplog.at_level(logging.WARNING, logger="cadence.tracking.background"):
        accepted = [worker.submit(i) for i in range(20)]  # returns at once while the handler is stuck
        assert not release.is_set() and handled == []
        release.set()
        assert worker.close(timeout=10)
    # the first item was taken by the worker, four waited in the queue, the rest were dropped and counted
    assert accepted.count(True) in (4, 5) and worker.dropped == 20 - accepted.count(True)
    assert handled == [i for i, ok in enumerate(accepted) if ok]
    text = caplog.text
    assert "cannot keep up" in text and f"dropped {worker.dropped} message(s)" in text
    assert not worker.submit(99)  # closed


def test_close_gives_up_on_a_hung_handler_within_its_deadline() -> None:
    stuck = threading.Event()
    worker = BackgroundWorker("hung receiver", lambda item: stuck.wait(30))
    worker.submit(1)
    worker.submit(2)
    assert worker.close(timeout=0.3) is False  # returned (the daemon thread is abandoned)
    stuck.set()


def test_wandb_without_an_api_key_is_reported_once_and_never_prompts(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    from cadence.tracking.wandb_sink import WandbSink

    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no saved W&B login
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    sink = WandbSink("cadence-tests", None)
    sink.open(_run(tmp_path), None)
    with caplog.at_level(logging.ERROR, logger="cadence.tracking.wandb_sink"):
        for step in (1, 2):
            sink.write({"step": step, "loss": 0.5})
        sink.event("health_warning", {"step": 2, "rule": "r", "message": "m"})
        sink.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "no W&B API key: run `wandb login` or set WANDB_API_KEY" in errors[0]
    assert sink.state_dict()["run_id"] and not (tmp_path / "wandb").exists()
