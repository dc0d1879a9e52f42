"""Webhooks: a JSON POST per run event, to any number of receivers (`logging.webhooks`).

Two forms, as SimpleTuner names them: `raw` posts one structured event (type, severity, job_id, title,
message, step, timestamp, data; sample events add the first frames as base64 PNGs under `images`), and
`discord` posts Discord's webhook message (`content`, with sample frames attached as files). Each receiver
has its own background worker: a slow or dead one delays nothing else, and never a training step. A POST
times out after a few seconds and is retried with backoff on connection errors, 429 and 5xx; what still
fails is counted and reported once per receiver, with the URL left out (it holds the receiver's token).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cadence.tracking.background import BackgroundWorker
from cadence.tracking.sink import RunInfo, severity

log = logging.getLogger(__name__)

LEVELS = {"critical": 0, "error": 1, "warning": 2, "info": 3, "debug": 4}  # SimpleTuner's order
TIMEOUT_S = (3.05, 5.0)  # connect, read
ATTEMPTS = 3
BACKOFF_S = 1.0
CLOSE_WAIT_S = 15.0  # how long the end of a run waits for queued events (finish, failure) to go out
DISCORD_LIMIT = 2000  # characters of a Discord message
MAX_ATTACHMENTS = 4
MAX_ATTACHMENT_BYTES = 8 * 2**20
TITLES = {
    "start": "Training started",
    "checkpoint": "Checkpoint saved",
    "sample": "Samples written",
    "alpha_phase": "Alpha phase change",
    "health_warning": "Health warning",
    "finish": "Training finished",
    "failure": "Training failed",
    "publish": "Hub upload",
}


class _Delivery(Exception):
    def __init__(self, text: str, retry: bool, wait: float = 0.0) -> None:
        super().__init__(text)
        self.retry = retry
        self.wait = wait


class WebhookReceiver:
    """One configured receiver: its filter, its form and its worker."""

    def __init__(self, index: int, entry: Any, job: str, run_dir: Path, scrub: Any) -> None:
        self.index = index
        self.entry = entry
        self.job = job
        self.run_dir = run_dir
        self.scrub = scrub
        self.label = f"webhook {index + 1} ({entry.webhook_type}, {urlsplit(entry.webhook_url).hostname})"
        self.sent = 0
        self.failed = 0
        self.worker = BackgroundWorker(self.label, self._deliver)
        import requests

        self.session = requests.Session()

    def wants(self, kind: str, payload: dict[str, Any]) -> bool:
        if self.entry.events is not None and kind not in self.entry.events:
            return False
        return LEVELS[severity(kind, payload)] <= LEVELS[self.entry.log_level]

    # ------------------------------------------------------------------------------------ payloads
    def raw_body(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        data = {k: v for k, v in payload.items() if k not in ("step", "message")}
        if "files" in data:
            data["files"] = [self._relative(f) for f in data["files"]]
        body: dict[str, Any] = {
            "type": f"cadence.{kind}",
            "event": kind,
            "severity": severity(kind, payload),
            "job_id": self.job,
            "title": TITLES.get(kind, kind),
            "message": payload.get("message", ""),
            "step": payload.get("step"),
            "timestamp": datetime.now(UTC).isoformat(),
            "data": data,
        }
        if kind == "sample":
            body["images"] = [
                {
                    "name": p.name,
                    "mime": "image/png",
                    "base64": base64.b64encode(p.read_bytes()).decode("ascii"),
                }
                for p in self._frames(payload)
            ]
        return body

    def discord_body(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        prefix = self.entry.message_prefix if self.entry.message_prefix is not None else self.job
        step = payload.get("step")
        where = f" (step {step})" if step is not None else ""
        text = f"`({prefix})` **{TITLES.get(kind, kind)}**{where}: {payload.get('message', '')}"
        if len(text) > DISCORD_LIMIT:
            text = text[: DISCORD_LIMIT - 1] + "…"
        return {"content": text}

    def _relative(self, path: Any) -> str:
        p = Path(path)
        try:
            return p.relative_to(self.run_dir).as_posix()
        except ValueError:
            return p.name

    def _frames(self, payload: dict[str, Any]) -> list[Path]:
        frames = [Path(f) for f in payload.get("files", []) if str(f).endswith(".png")]
        return [p for p in frames if p.is_file() and p.stat().st_size <= MAX_ATTACHMENT_BYTES][
            :MAX_ATTACHMENTS
        ]

    # ------------------------------------------------------------------------------------ delivery
    def submit(self, kind: str, payload: dict[str, Any]) -> None:
        self.worker.submit((kind, payload))

    def _deliver(self, item: tuple[str, dict[str, Any]]) -> None:
        kind, payload = item
        last = ""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._post(kind, payload)
                self.sent += 1
                return
            except _Delivery as problem:
                last = str(problem)
                if not problem.retry or attempt == ATTEMPTS:
                    break
                time.sleep(max(problem.wait, BACKOFF_S * 2 ** (attempt - 1)))
        self.failed += 1
        if self.failed == 1:
            log.warning(
                "%s: could not deliver the %s event (%s); later failures are counted", self.label, kind, last
            )

    def _post(self, kind: str, payload: dict[str, Any]) -> None:
        import requests

        headers = {"User-Agent": "cadence-webhooks"}
        if self.entry.auth_token:
            headers["X-API-Key"] = self.entry.auth_token
        kwargs: dict[str, Any] = {
            "timeout": TIMEOUT_S,
            "verify": not self.entry.ssl_no_verify,
            "headers": headers,
        }
        if self.entry.webhook_type == "discord":
            body = self.discord_body(kind, payload)
            frames = self._frames(payload) if kind == "sample" else []
            if frames:
                kwargs["data"] = {"payload_json": json.dumps(body)}
                kwargs["files"] = {
                    f"files[{i}]": (p.name, p.read_bytes(), "image/png") for i, p in enumerate(frames)
                }
            else:
                kwargs["json"] = body
        else:
            kwargs["json"] = self.raw_body(kind, payload)
        try:
            response = self.session.post(self.entry.webhook_url, **kwargs)
        except requests.RequestException as error:
            raise _Delivery(self.scrub(f"{type(error).__name__}: {error}"), retry=True) from None
        if response.status_code == 429 or response.status_code >= 500:
            wait = _retry_after(response.headers.get("Retry-After"))
            raise _Delivery(f"HTTP {response.status_code}", retry=True, wait=wait)
        if response.status_code >= 400:
            raise _Delivery(f"HTTP {response.status_code}: check the receiver's URL and token", retry=False)

    def close(self, timeout: float) -> None:
        self.worker.close(timeout)
        if self.failed:
            log.warning("%s: %d of %d events not delivered", self.label, self.failed, self.failed + self.sent)
        self.session.close()


def _retry_after(value: str | None) -> float:
    try:
        return min(10.0, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0


class WebhookSink:
    name = "webhooks"

    def __init__(self, entries: list[Any]) -> None:
        self.entries = entries
        self.receivers: list[WebhookReceiver] = []

    def open(self, run: RunInfo, resume_step: int | None) -> None:
        self.receivers = [
            WebhookReceiver(i, entry, run.name, run.run_dir, run.redactor.scrub)
            for i, entry in enumerate(self.entries)
        ]

    def write(self, row: dict[str, Any]) -> None:
        return None  # events only: metrics rows would flood a chat channel

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        for receiver in self.receivers:
            if receiver.wants(kind, payload):
                receiver.submit(kind, payload)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        deadline = time.monotonic() + CLOSE_WAIT_S
        for receiver in self.receivers:
            receiver.close(max(0.0, deadline - time.monotonic()))

    def state_dict(self) -> dict[str, Any]:
        return {}
