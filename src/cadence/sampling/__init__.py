"""Samples during training (`TrainingSampler`) and `cadence sample` (`sample_command`).

Both generate through diffusers' Wan pipelines over the loaded modules with the LoRA networks attached by
hooks, through one `SampleEngine`, so a sample from exported files equals the in-training sample.
"""

from cadence.sampling.prompts import SampleSpec, resolve_samples, sample_texts
from cadence.sampling.training import TrainingSampler
from cadence.sampling.validation import attention_unavailable, validate_samples

__all__ = [
    "SampleSpec",
    "TrainingSampler",
    "attention_unavailable",
    "resolve_samples",
    "sample_texts",
    "validate_samples",
]
