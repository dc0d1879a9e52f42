"""Weights & Biases (`logging.use_wandb`, `project_name`, `run_name`): the TensorBoard scalars, samples as
media, the resolved config, and events.

Every `wandb` call runs on the sink's background worker, so neither `wandb.init` nor a slow upload ever
holds up a step. The W&B run id is chosen here and kept in the training state: a resumed run continues the
same W&B run (`resume="allow"`). `WANDB_MODE=offline` writes the run under `{run_dir}/wandb/` for a later
`wandb sync`. Events: a cumulative `events` table (step, kind, expert, message), plus W&B alerts for health
warnings and failures. Git metadata and console capture are off: the run's log lives in `log.txt`, and a
git remote URL can carry credentials.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import string
from pathlib import Path
from typing import Any

from cadence.tracking.background import BackgroundWorker
from cadence.tracking.sink import RunInfo

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 120.0  # wandb.finish uploads what is left (online); offline it returns at once
TABLE_KINDS = ("start", "checkpoint", "alpha_phase", "health_warning", "finish", "failure", "publish")


def _offline() -> bool:
    mode = os.environ.get("WANDB_MODE", "").lower()
    return mode in ("offline", "dryrun", "disabled") or os.environ.get("WANDB_OFFLINE", "").lower() in (
        "1",
        "true",
    )


def new_run_id() -> str:
    """8 lowercase letters and digits, the form of W&B's own run ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite fields of a metrics row (what TensorBoard gets too)."""
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


class WandbSink:
    name = "wandb"

    def __init__(self, project: str, run_name: str | None, every: int = 1, capacity: int = 4096) -> None:
        self.project = project
        self.run_name = run_name
        self.every = every
        self.capacity = capacity
        self.run_id: str | None = None
        self.resume_step: int | None = None
        self.worker: BackgroundWorker | None = None
        self.info: RunInfo | None = None
        self._run: Any = None
        self._broken: str | None = None
        self._events: list[list[Any]] = []
        self._exit_code = 0
        self._last_step = 0
        self._closed = False

    # --------------------------------------------------------------------------- training thread
    def open(self, run: RunInfo, resume_step: int | None) -> None:
        self.info = run
        self.run_id = (run.restored.get(self.name) or {}).get("run_id") or new_run_id()
        self.resume_step = resume_step

    def _submit(self, item: tuple[Any, ...]) -> None:
        """The W&B run starts with the first thing to record (a run that has nothing left to train
        creates none)."""
        if self._closed:
            return
        if self.worker is None:
            self.worker = BackgroundWorker("W&B", self._handle, self.capacity)
            self.worker.submit(("init", self.resume_step))
        self.worker.submit(item)

    def write(self, row: dict[str, Any]) -> None:
        if int(row["step"]) % self.every == 0:
            self._submit(("log", int(row["step"]), scalars(row)))

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        self._submit(("event", kind, dict(payload)))

    def flush(self) -> None:
        return None  # wandb streams to its own service; nothing to make durable here

    def close(self) -> None:
        self._closed = True
        if self.worker is None:
            return
        self.worker.submit(("finish",))
        self.worker.close(CLOSE_WAIT_S)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id else {}

    # ----------------------------------------------------------------------------- worker thread
    def _handle(self, item: tuple[Any, ...]) -> None:
        if self._broken is not None and item[0] != "finish":
            return
        try:
            getattr(self, f"_do_{item[0]}")(*item[1:])
        except Exception as error:  # noqa: BLE001 - reported once; training never sees it
            assert self.info is not None
            if self._broken is not None:
                return
            self._broken = self.info.redactor.scrub(f"{type(error).__name__}: {error}")
            log.error(
                "tracking: W&B failed and is off for the rest of this run (training continues; the metrics "
                "JSONL is unaffected): %s",
                self._broken,
            )

    def _do_init(self, resume_step: int | None) -> None:
        import wandb

        assert self.info is not None
        if not _offline() and not wandb.login(prompt=False, verify=False):
            raise RuntimeError(
                "no W&B API key: run `wandb login` or set WANDB_API_KEY before training (or WANDB_MODE=offline "
                "and `wandb sync` later)"
            )
        self._run = wandb.init(
            project=self.project,
            name=self.run_name or self.info.name,
            id=self.run_id,
            resume="allow",
            dir=str(self.info.run_dir),
            config=self.info.config,
            settings=wandb.Settings(console="off", disable_git=True, save_code=False, silent=True),
        )
        # a resumed W&B run continues at its own next step; rows before it are already there
        self._last_step = max(int(getattr(self._run, "step", 0) or 0), resume_step or 0)
        log.info("W&B run %s (%s)", self.run_id, "offline" if _offline() else self.project)

    def _do_log(self, step: int, values: dict[str, float]) -> None:
        if (
            step < self._last_step
        ):  # already in this W&B run (a resume replays the steps after its checkpoint)
            return
        self._run.log(values, step=step)
        self._last_step = step

    def _do_event(self, kind: str, payload: dict[str, Any]) -> None:
        import wandb

        step = max(int(payload.get("step") or 0), self._last_step)
        message = str(payload.get("message", ""))
        if kind == "sample":
            self._run.log(self._media(payload), step=step)
        elif kind in TABLE_KINDS:
            self._events.append([payload.get("step"), kind, payload.get("expert"), message])
            self._run.log(
                {"events": wandb.Table(columns=["step", "kind", "expert", "message"], data=self._events)},
                step=step,
            )
        if kind == "health_warning":
            self._run.alert(title=f"health warning: {payload.get('rule')}"[:63], text=message, level="WARN")
        elif kind == "failure":
            self._exit_code = 1
            self._run.alert(title="training failed", text=message, level="ERROR")
        elif kind == "finish":
            self._run.summary["status"] = payload.get("status")
        self._last_step = step

    def _media(self, payload: dict[str, Any]) -> dict[str, Any]:
        import wandb

        media: dict[str, Any] = {}
        for name in payload.get("files", []):
            path = Path(name)
            if not path.is_file():  # removed since it was written: nothing to show, not a broken sink
                continue
            index = path.stem.rsplit("_", 1)[-1]
            caption = _prompt(path)
            if path.suffix == ".mp4":
                media[f"samples/{index}"] = wandb.Video(str(path), format="mp4", caption=caption)
            elif path.suffix == ".png":
                media[f"samples/{index}_first_frame"] = wandb.Image(str(path), caption=caption)
        return media

    def _do_finish(self) -> None:
        if self._run is not None:
            self._run.finish(exit_code=self._exit_code)
            self._run = None


def _prompt(media: Path) -> str | None:
    """The prompt from the sample's JSON sidecar."""
    try:
        return str(json.loads(media.with_suffix(".json").read_text(encoding="utf-8")).get("prompt"))
    except (OSError, ValueError):
        return None
