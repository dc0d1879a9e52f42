"""Which expert trains at each optimizer step.

Experts take turns in blocks of `switch_every` optimizer steps (the seed's `switch_boundary_every`),
in model order (high_noise first), visiting only the experts being trained. The position inside the
rotation (expert index and steps already spent in the current block) is part of the resume state:
the seed trainer restarted the rotation at the first expert on resume, which silently changed the
training mix whenever a run stopped inside a block.
"""

from __future__ import annotations

from typing import Any


class ExpertRouter:
    """Round-robin over trained experts; call `advance()` once after each optimizer step."""

    def __init__(self, trained: list[str], switch_every: int) -> None:
        if not trained:
            raise ValueError("ExpertRouter needs at least one trained expert")
        if len(set(trained)) != len(trained):
            raise ValueError(f"ExpertRouter: duplicate expert names in {trained}")
        if switch_every < 1:
            raise ValueError(f"train.switch_boundary_every must be >= 1, got {switch_every}")
        self.trained = list(trained)
        self.switch_every = int(switch_every)
        self.index = 0
        self.steps_in_block = 0

    def current(self) -> str:
        """The expert the next optimizer step trains."""
        return self.trained[self.index]

    def advance(self) -> None:
        """Record one finished optimizer step; move to the next expert when its block is full."""
        self.steps_in_block += 1
        if self.steps_in_block >= self.switch_every:
            self.steps_in_block = 0
            self.index = (self.index + 1) % len(self.trained)

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "steps_in_block": self.steps_in_block, "trained": list(self.trained)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the rotation; refuses a state saved with a different set of trained experts."""
        saved = state.get("trained")
        if saved is not None and list(saved) != self.trained:
            raise ValueError(
                f"resume state was saved while training experts {list(saved)}, but this run trains "
                f"{self.trained}; set model.model_kwargs.train_high_noise / train_low_noise as in the "
                "original run, or start a new run"
            )
        index, steps = int(state["index"]), int(state["steps_in_block"])
        if not 0 <= index < len(self.trained) or not 0 <= steps < self.switch_every:
            raise ValueError(
                f"resume state has expert index {index} / steps_in_block {steps}, outside this run's "
                f"{len(self.trained)} experts x switch_boundary_every={self.switch_every}; keep "
                "train.switch_boundary_every as in the original run"
            )
        self.index, self.steps_in_block = index, steps
