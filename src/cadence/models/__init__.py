"""Model adapters: load a Wan model (local Diffusers folder or hub id) behind one interface.

`load_model_adapter` (registry.py) is the entry point; `write_tiny_model` (tiny.py) writes tiny
random-weight folders for tests and the demo.
"""

from cadence.models.base import ArchMismatchError, ExpertSpec, ModelAdapter, ModelLoadError
from cadence.models.registry import check_model, detect_arch, load_model_adapter

__all__ = [
    "ArchMismatchError",
    "ExpertSpec",
    "ModelAdapter",
    "ModelLoadError",
    "check_model",
    "detect_arch",
    "load_model_adapter",
]
