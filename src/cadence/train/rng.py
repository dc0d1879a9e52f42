"""Capture and restore every random stream training reads, for bit-exact resume.

Global streams (torch CPU/CUDA, numpy, random) are used by LoRA dropout and third-party code; the trainer's
own draws (noise, timesteps, caption dropout) use dedicated generators so that sampling or evaluation
cannot shift them.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

# cuBLAS picks a reduction order per workspace; a fixed workspace config is its documented deterministic mode
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


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


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """`train.deterministic: true`: deterministic kernels only while the run lasts (bit-exact CUDA resume).

    The saved random streams make resume bit-exact on the CPU. On CUDA that is not enough: some kernels
    (attention backward, atomics-based scatter/index_add, cuBLAS reductions) add in an order that changes from
    run to run, so a resumed run drifts from an uninterrupted one by the GPU's run-to-run noise. Deterministic
    kernels remove that noise but are slower, hence opt-in. Where an op has no deterministic kernel torch
    raises a RuntimeError (the runner reports it with the key's name).

    Enter this before anything touches CUDA: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it creates its first
    handle. The variable stays set afterwards (it only sizes cuBLAS's workspace); the torch flags are put back
    to their previous values on exit, so one run does not change the process for the next (tests, the demo).
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    cudnn = torch.backends.cudnn
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic = True
    cudnn.benchmark = False
    log.info(
        "train.deterministic: deterministic kernels only, for bit-exact resume on CUDA; this costs speed"
    )
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        cudnn.deterministic, cudnn.benchmark = previous[2], previous[3]


@dataclass
class ExpertStreams:
    """One expert's draws: noise, timesteps and caption dropout. The noise generator lives on the device the
    noise is used on (issue 23: drawn there, no host draw and copy per step; on the CPU nothing changes)."""

    noise: torch.Generator
    timesteps: torch.Generator
    captions: random.Random

    @classmethod
    def seeded(cls, seed: int, noise_device: torch.device | str = "cpu") -> ExpertStreams:
        return cls(
            torch.Generator(device=noise_device).manual_seed(seed * 3 + 1),
            torch.Generator().manual_seed(seed * 3 + 2),
            random.Random(seed * 3 + 3),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "noise": self.noise.get_state(),
            "noise_device": self.noise.device.type,
            "timesteps": self.timesteps.get_state(),
            "captions": self.captions.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_on = state.get("noise_device", "cpu")  # checkpoints before issue 23 drew noise on the CPU
        if saved_on == self.noise.device.type:
            self.noise.set_state(state["noise"])
        else:
            log.warning(
                "resume: the noise stream was saved for the %s and is drawn on the %s now; it restarts from "
                "its seed (the rest of the state resumes exactly)",
                saved_on,
                self.noise.device.type,
            )
        self.timesteps.set_state(state["timesteps"])
        self.captions.setstate(state["captions"])


# seed distance between the experts' streams (the first expert keeps the job seed's own streams)
EXPERT_SEED_STRIDE = 1_000_003


@dataclass
class TrainingRandomness:
    """The trainer's own random streams, one set per expert, each derived from the job seed and the
    expert's place in the model (`experts`: the model's expert names in order).

    Per expert, so that an expert's k-th step draws the same noise, timesteps and caption dropout whether the
    experts alternate on one device or train at the same time on two rank groups (expert parallel), and
    whether the other expert trains at all.
    """

    seed: int
    experts: tuple[str, ...] = ("main",)
    noise_device: str = "cpu"  # where the noise is drawn: the training device (cuda:N) or the CPU
    streams: dict[str, ExpertStreams] = field(init=False)

    def __post_init__(self) -> None:
        self.experts = tuple(self.experts)
        self.streams = {
            name: ExpertStreams.seeded(self.seed + EXPERT_SEED_STRIDE * i, self.noise_device)
            for i, name in enumerate(self.experts)
        }

    def of(self, expert: str) -> ExpertStreams:
        return self.streams[expert]

    def state_dict(self) -> dict[str, Any]:
        return {"streams": {name: s.state_dict() for name, s in self.streams.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("streams")
        if saved is None:  # a checkpoint from before the per-expert streams: one shared set
            first = self.experts[0]
            self.streams[first].load_state_dict(state)
            if len(self.experts) > 1:
                log.warning(
                    "resume: the checkpoint holds one shared noise/timestep stream (an older Cadence); it "
                    "continues for %s, the other experts' streams start from the seed",
                    first,
                )
            return
        for name, stream_state in saved.items():
            if name in self.streams:
                self.streams[name].load_state_dict(stream_state)
