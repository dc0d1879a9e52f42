"""Fan-out to every sink, with failures isolated: a sink that raises is reported once and dropped.

Tracking is a copy of what the run writes anyway, so losing a sink must never cost a training step. The
`active` switch turns the whole set off (a distributed run's non-main ranks build theirs inactive).
"""

from __future__ import annotations

import logging
from typing import Any

from cadence.tracking.sink import RunInfo, Sink

log = logging.getLogger(__name__)


class SinkSet:
    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.sinks: list[Sink] = []
        self.dropped: dict[str, str] = {}  # sink name -> the (redacted) error that turned it off
        self.run: RunInfo | None = None

    def add(self, sink: Sink) -> None:
        if self.active:
            self.sinks.append(sink)

    def names(self) -> list[str]:
        return [sink.name for sink in self.sinks]

    def open(self, run: RunInfo, resume_step: int | None) -> None:
        self.run = run
        for sink in list(self.sinks):
            self._call(sink, "open", run, resume_step)

    def write(self, row: dict[str, Any]) -> None:
        for sink in list(self.sinks):
            self._call(sink, "write", row)

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        for sink in list(self.sinks):
            self._call(sink, "event", kind, payload)

    def flush(self) -> None:
        for sink in list(self.sinks):
            self._call(sink, "flush")

    def close(self) -> None:
        for sink in list(self.sinks):
            self._call(sink, "close")
        self.sinks.clear()

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Each sink's resume state by name (a failing one is dropped, not fatal)."""
        out: dict[str, dict[str, Any]] = {}
        for sink in list(self.sinks):
            state = self._call(sink, "state_dict")
            if state:
                out[sink.name] = state
        return out

    def _call(self, sink: Sink, method: str, *args: Any) -> Any:
        try:
            return getattr(sink, method)(*args)
        except Exception as error:  # noqa: BLE001 - any failure of a copy must not stop training
            self._drop(sink, method, error)
            return None

    def _drop(self, sink: Sink, method: str, error: Exception) -> None:
        redactor = self.run.redactor if self.run is not None else None
        text = f"{type(error).__name__}: {error}"
        text = redactor.scrub(text) if redactor is not None else text
        self.dropped[sink.name] = text
        if sink in self.sinks:
            self.sinks.remove(sink)
        log.error(
            "tracking: %s failed in %s() and is off for the rest of this run (training continues; the "
            "metrics JSONL, checkpoints and samples are unaffected): %s",
            sink.name,
            method,
            text,
        )
        if method != "close":
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - already reported; its resources go with the process
                log.debug("closing the failed sink %s failed too", sink.name, exc_info=True)
