"""What tracking costs a training step: `RunRecorder.write` + `event` with network sinks on vs the bare JSONL.

Two recorders over the same rows (60 numeric fields, like a two-expert metrics line): a bare one (JSONL only)
and a tracked one (JSONL + W&B offline + two webhooks to a local receiver that takes RECEIVER_S per POST,
i.e. far slower than the steps). Each step writes one row and sends one event to both, interleaved, timed
with perf_counter, the order alternating step by step; the ratio of each pair (tracked / bare) is taken and
their median printed with its spread (bench/pairing.py), with the per-step milliseconds. Network sinks only queue, so the ratio stays near 1 however slow the receiver is;
the messages the full queues dropped are counted.

    python bench/tracking_overhead_bench.py [--steps 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairing import Spread  # noqa: E402

RECEIVER_S = 0.05


class SlowReceiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(RECEIVER_S)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def recorder(root: Path, name: str, logging_section: dict):
    from cadence.config.loader import load_config_dict
    from cadence.train.checkpoint import CheckpointManager, RunPaths
    from cadence.train.recorder import RunRecorder

    cfg = load_config_dict(
        {
            "name": name,
            "training_folder": str(root),
            "model": {"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": "wan22_14b_i2v"},
            "datasets": [{"folder_path": str(root)}],
            "train": {"disable_sampling": True},
            "logging": logging_section,
        }
    )
    paths = RunPaths(cfg.run_dir, cfg.name)
    rec = RunRecorder(cfg, paths, CheckpointManager(paths, 5, ["high_noise", "low_noise"]))
    rec.open(resume_step=None)
    return rec


def row(step: int) -> dict:
    out: dict = {"step": step, "expert": "high_noise" if step % 2 else "low_noise"}
    out.update({f"field_{i}": step * 1e-3 + i for i in range(60)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = recorder(root, "bare", {"tensorboard": False})
        tracked = recorder(
            root,
            "tracked",
            {"tensorboard": False, "use_wandb": True, "webhooks": [f"{url}/a", {"webhook_url": f"{url}/b"}]},
        )
        ratios, bare_ms, tracked_ms = [], [], []
        for step in range(1, args.steps + 1):
            times = []
            for rec in (bare, tracked) if step % 2 else (tracked, bare):  # alternate who goes first
                started = time.perf_counter()
                rec.write(row(step))
                rec.event("checkpoint", {"step": step, "files": [], "message": "saved"})
                times.append((rec, time.perf_counter() - started))
            t = dict((id(r), s) for r, s in times)
            bare_ms.append(t[id(bare)] * 1e3)
            tracked_ms.append(t[id(tracked)] * 1e3)
            ratios.append(t[id(tracked)] / t[id(bare)])
        dropped = sum(
            r.worker.dropped for s in tracked.sinks.sinks if hasattr(s, "receivers") for r in s.receivers
        )
        closing = time.perf_counter()
        tracked.close()
        bare.close()
        closed_s = time.perf_counter() - closing
    server.shutdown()
    print(f"steps: {args.steps}; receiver: {RECEIVER_S * 1e3:.0f} ms per POST, two webhooks + W&B offline")
    print(f"bare JSONL write+event: median {statistics.median(bare_ms):.3f} ms/step")
    print(f"with network sinks:     median {statistics.median(tracked_ms):.3f} ms/step")
    print(f"per-step ratio tracked / bare: {Spread.of(ratios).text('.2f')}")
    print(f"webhook events dropped by full queues: {dropped}; close() waited {closed_s:.1f} s (bounded)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
