"""A non-main rank's recorder: rank 0 writes the one metrics line per step, every checkpoint and every
tracking event; the other ranks write nothing but take part in what a save gathers from them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cadence.train.checks import evaluation_weights
from cadence.train.precision import resolve_dtype
from cadence.train.recorder import RunRecorder

if TYPE_CHECKING:
    from cadence.train.setup import TrainingSetup


class FollowerRecorder(RunRecorder):
    def __init__(self, cfg: Any, paths: Any, checkpoints: Any) -> None:
        super().__init__(cfg, paths, checkpoints, tracking=False)

    def open(self, resume_step: int | None, tracking_state: dict[str, Any] | None = None) -> None:
        """The metrics log is rank 0's: nothing is opened or truncated here."""

    def write(self, row: dict[str, Any]) -> None:
        """Rank 0 writes the step's line (its losses are the ranks' mean already)."""

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        """Rank 0 tells the sinks."""

    def save(self, setup: TrainingSetup, step: int) -> None:
        """The same finiteness check as rank 0 (so every rank stops alike) and this rank's part of the
        training state (`TrainingSetup.state_dict` gathers every rank's random and sampler state)."""
        with evaluation_weights(setup.optimizer, setup.ema):
            self.check_finite(setup, step, resolve_dtype(self.cfg.save.dtype))
        setup.state_dict(step)

    def close(self) -> None:
        """Nothing was opened."""
