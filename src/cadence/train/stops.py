"""Why a run stops early with a message the user must read (exit code 3).

Its own module because the loop, the recorder and the checks all raise it and none may import the others.
"""

from __future__ import annotations


class TrainingStopped(Exception):
    """The run stops for a reason the user must read (NaN streak, a non-finite adapter, a health stop)."""
