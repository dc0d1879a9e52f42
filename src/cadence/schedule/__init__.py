"""Per-step schedules: timestep sampling, expert routing (alpha phases live in alpha_phases.py)."""

from cadence.schedule.experts import ExpertRouter
from cadence.schedule.timesteps import TimestepSampler

__all__ = ["ExpertRouter", "TimestepSampler"]
