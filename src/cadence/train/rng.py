"""Capture and restore every random stream training reads, for bit-exact resume.

Global streams (torch CPU/CUDA, numpy, random) are used by LoRA dropout and third-party code; the trainer's
own draws (noise, timesteps, caption dropout) use dedicated generators so that sampling or evaluation
cannot shift them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def capture_global_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainingRandomness:
    """The trainer's own random streams, each derived from the job seed."""

    seed: int
    noise: torch.Generator = field(init=False)
    timesteps: torch.Generator = field(init=False)
    captions: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.noise = torch.Generator().manual_seed(self.seed * 3 + 1)
        self.timesteps = torch.Generator().manual_seed(self.seed * 3 + 2)
        self.captions = random.Random(self.seed * 3 + 3)

    def state_dict(self) -> dict[str, Any]:
        return {
            "noise": self.noise.get_state(),
            "timesteps": self.timesteps.get_state(),
            "captions": self.captions.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise.set_state(state["noise"])
        self.timesteps.set_state(state["timesteps"])
        self.captions.setstate(state["captions"])
