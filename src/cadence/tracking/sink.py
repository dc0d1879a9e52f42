"""The sink protocol and the run description every sink opens with.

A sink gets every metrics row (`write`) and every event (`event`). Events are what someone watching a run
wants to hear about; each payload carries `step` and a one-line `message`, plus the fields listed in
`EVENT_KINDS`. Sinks decide themselves what to keep (TensorBoard thins rows to `logging.log_every`,
webhooks ignore rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cadence.tracking.secrets import Redactor

# kind -> the payload fields besides `step` and `message`
EVENT_KINDS: dict[str, tuple[str, ...]] = {
    "start": ("total_steps", "resumed"),
    "checkpoint": ("files",),
    "sample": ("files",),
    "alpha_phase": ("expert", "from_phase", "to_phase", "alphas_before", "alphas_after"),
    "health_warning": ("rule", "expert"),
    "finish": ("status", "total_steps"),  # status: completed | health_stop | stopped
    "failure": ("error",),
    "publish": ("status", "repo_id"),  # save.push_to_hub's outcome: published | publish_failed
}


def severity(kind: str, payload: dict[str, Any]) -> str:
    """error: the run failed or its upload did; warning: a health warning; info: everything else."""
    if kind == "failure" or (kind == "publish" and payload.get("status") == "publish_failed"):
        return "error"
    return "warning" if kind == "health_warning" else "info"


EventEmitter = Callable[[str, dict[str, Any]], None]


def no_events(kind: str, payload: dict[str, Any]) -> None:
    """The emitter of a part built without a recorder (tests, tools): events go nowhere."""


@dataclass
class RunInfo:
    """What a sink knows about the run it records."""

    name: str
    run_dir: Path
    config: dict[str, Any]  # the resolved config, secrets redacted (safe to send anywhere)
    total_steps: int
    redactor: Redactor = field(default_factory=Redactor)
    restored: dict[str, dict[str, Any]] = field(default_factory=dict)  # sink name -> its saved state


@runtime_checkable
class Sink(Protocol):
    name: str

    def open(self, run: RunInfo, resume_step: int | None) -> None:
        """Start recording; `resume_step` is the checkpoint step a resumed run continues from."""

    def write(self, row: dict[str, Any]) -> None:
        """One metrics row (the JSONL line of a step)."""

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        """One of EVENT_KINDS."""

    def flush(self) -> None:
        """Make what was written durable (called at every checkpoint)."""

    def close(self) -> None:
        """Finish; network sinks deliver what is queued within a bounded wait."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue (kept in the training state); {} for most sinks."""
