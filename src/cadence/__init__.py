"""Cadence: LoRA/LyCORIS training for video diffusion transformers that measures itself honestly."""

__version__ = "0.1.0"
