"""The real `cadence caption` process killed with SIGKILL mid-run, then run again: finished captions survive
byte for byte and are skipped, the rest is captioned, and nothing half-written is visible to the loader. A
SIGINT at the worst moment (just after a caption file was written) stops the run with that caption counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cadence.cli import build_parser
from cadence.data.synthetic import render_frame, write_clip
from cadence.models.tiny_vlm import write_tiny_vlm
from cadence.tools.caption import Tally, options_from_args, run_captions
from cadence.tools.caption_output import TextSink

FILES = 10


def _command(folder: Path, model: Path, status: Path) -> list[str]:
    options = ["--max-new-tokens", "12", "--frames", "3", "--device", "cpu", "--status-file", str(status)]
    return [sys.executable, "-m", "cadence.cli", "caption", str(folder), "--model", str(model), *options]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_kill_9_then_resume_skips_the_done_ones(tmp_path: Path) -> None:
    model = write_tiny_vlm(tmp_path / "vlm", "qwen2_5_vl", seed=0)
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(FILES // 2):
        write_clip(folder / f"clip_{i}.mp4", 64, 48, 17, 16, seed=i)
        Image.fromarray(render_frame(i, 64, 48, seed=20 + i)).save(folder / f"still_{i}.png")
    status = tmp_path / "status.json"
    proc = subprocess.Popen(
        _command(folder, model, status), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not list(folder.glob("*.txt")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no caption within 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()
    done = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("*.txt")}
    assert 1 <= len(done) < FILES, f"{len(done)} captions when killed; the run should have been mid-way"
    assert all(data.endswith(b"\n") and len(data) > 1 for data, _ in done.values())  # complete or absent

    # the rerun (in this process: the same code, without a second interpreter start)
    argv = ["caption", str(folder), "--model", str(model), "--max-new-tokens", "12", "--frames", "3"]
    tally = run_captions(options_from_args(build_parser().parse_args([*argv, "--status-file", str(status)])))
    assert (tally.kept, tally.written, tally.failed) == (len(done), FILES - len(done), 0)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("*.txt")}
    assert len(after) == FILES
    assert all(after[name] == done[name] for name in done)  # the finished ones were not touched
    assert all(data.endswith(b"\n") and len(data) > 1 for data, _ in after.values())


def _caption_stills(tmp_path: Path, files: int) -> tuple[Path, Path, Tally]:
    """`cadence caption` (in this process) over `files` small PNGs; returns (folder, status file, tally)."""
    model = write_tiny_vlm(tmp_path / "vlm", "qwen2_5_vl", seed=0)
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(files):
        Image.fromarray(render_frame(i, 48, 32, seed=i)).save(folder / f"still_{i}.png")
    status = tmp_path / "status.json"
    argv = [
        "caption",
        str(folder),
        "--model",
        str(model),
        "--max-new-tokens",
        "8",
        "--status-file",
        str(status),
    ]
    return folder, status, run_captions(options_from_args(build_parser().parse_args(argv)))


def test_sigint_right_after_a_write_is_counted_and_stops_before_the_next(tmp_path: Path, monkeypatch) -> None:
    """The UI's Stop once landed between a caption's write and its count: 4 files on disk, 3 reported."""
    real_write = TextSink.write

    def write_then_interrupt(self, media: Path, text: str) -> None:
        real_write(self, media, text)
        os.kill(os.getpid(), signal.SIGINT)  # delivered before the next bytecode runs

    monkeypatch.setattr(TextSink, "write", write_then_interrupt)
    folder, status, tally = _caption_stills(tmp_path, 3)
    written = sorted(p.name for p in folder.glob("*.txt"))
    assert (tally.state, tally.written, tally.done, written) == ("stopped", 1, 1, ["still_0.txt"])
    assert json.loads(status.read_text())["written"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back


def test_sigint_after_the_last_caption_still_saves_the_final_status(tmp_path: Path, monkeypatch) -> None:
    """A Stop that arrives as the run closes (all files done) must not cut the final status save short."""
    real_close = TextSink.close

    def close_then_interrupt(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_close(self)

    monkeypatch.setattr(TextSink, "close", close_then_interrupt)
    _folder, status, tally = _caption_stills(tmp_path, 2)
    saved = json.loads(status.read_text())
    assert (tally.state, tally.written, saved["state"], saved["written"]) == ("finished", 2, "finished", 2)
