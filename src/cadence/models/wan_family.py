"""The Wan family (2.1 T2V/I2V, 2.2 A14B T2V/I2V with two experts, 2.2 TI2V-5B) as a registered family.

The adapter is `wan.WanAdapter`, the memory layout `wan_memory`, the LoRA key map `wan_keys`, the tiny
folders `tiny.py`; this module holds the facts that need no weights (archs, detection, components).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cadence.models import wan_memory
from cadence.models.base import ModelLoadError
from cadence.models.family import ArchSpec, ModelFamily
from cadence.models.folders import component_config, present, read_model_index
from cadence.models.wan_keys import WAN_KEYS

TWO = ("high_noise", "low_noise")
ARCHS = {
    "wan21": ArchSpec("wan21", "Wan 2.1 T2V", temporal_multiple=4, native_fps=16),
    "wan21_i2v": ArchSpec("wan21_i2v", "Wan 2.1 I2V", i2v="always", temporal_multiple=4, native_fps=16),
    "wan22_14b": ArchSpec(
        "wan22_14b", "Wan 2.2 T2V A14B", TWO, temporal_multiple=4, native_fps=16, default_boundary=0.875
    ),
    "wan22_14b_i2v": ArchSpec(
        "wan22_14b_i2v",
        "Wan 2.2 I2V A14B",
        TWO,
        i2v="always",
        temporal_multiple=4,
        native_fps=16,
        default_boundary=0.9,
    ),
    "wan22_5b": ArchSpec(
        "wan22_5b", "Wan 2.2 TI2V 5B", i2v="optional", spatial_multiple=32, temporal_multiple=4, native_fps=24
    ),
}
# the ai-toolkit UI writes "arch:variant"
ALIASES = {
    "wan21:1b": "wan21",
    "wan21:14b": "wan21",
    "wan21_i2v:14b": "wan21_i2v",
    "wan21_i2v:14b480p": "wan21_i2v",  # the 480P I2V checkpoint: same architecture
    "wan22_14b:t2v": "wan22_14b",
    "wan22_14b_i2v:i2v": "wan22_14b_i2v",
    "wan22_5b:ti2v": "wan22_5b",
}


class WanFamily(ModelFamily):
    def detect(self, folder: Path, index: dict[str, Any]) -> str | None:
        if "Wan" not in str(index.get("_class_name", "")):
            return None
        name = "transformer" if present(index, "transformer") else "transformer_2"
        in_channels = int(component_config(folder, name).get("in_channels", 16))
        if in_channels == 48 or index.get("expand_timesteps"):
            return "wan22_5b"
        i2v = in_channels == 36
        if present(index, "transformer_2"):
            return "wan22_14b_i2v" if i2v else "wan22_14b"
        return "wan21_i2v" if i2v else "wan21"

    def required_components(self, arch: str) -> tuple[str, ...]:
        """Pipeline components Cadence loads for `arch` (sampling reuses them; nothing else is read)."""
        parts = ["tokenizer", "text_encoder", "vae", "scheduler", "transformer"]
        if self.archs[arch].two_experts:
            parts.append("transformer_2")
        if arch == "wan21_i2v":
            parts += ["image_encoder", "image_processor"]
        return tuple(parts)

    def load(
        self,
        folder: Path,
        arch: str,
        model_cfg: Any,
        device: Any,
        dtype: Any,
        model_id: str,
        files: dict[str, Path] | None = None,
    ):
        import torch

        from cadence.models.wan import WanAdapter

        kwargs = model_cfg.model_kwargs
        boundary = self.archs[arch].boundary(read_model_index(folder), kwargs.boundary_ratio)
        trained = ("main",)
        if self.archs[arch].two_experts:
            trained = tuple(
                name
                for name, on in (
                    ("high_noise", kwargs.train_high_noise),
                    ("low_noise", kwargs.train_low_noise),
                )
                if on
            )
            if not trained:
                raise ModelLoadError(
                    "model.model_kwargs.train_high_noise and train_low_noise are both false: nothing to train"
                )
        return WanAdapter.load(
            folder,
            arch,
            device=torch.device(device),
            dtype=dtype,
            boundary=boundary,
            model_id=model_id,
            low_vram=model_cfg.low_vram,
            trained_experts=trained,
            files=files,
        )

    # the perf layout is wan_memory's (kept as its own module: tests and benches use it directly)
    def transformer_blocks(self, transformer):
        return wan_memory.transformer_blocks(transformer)

    def keep_high_precision(self, name: str) -> bool:
        return wan_memory.keep_high_precision(name)

    def quantizable_linears(self, transformer):
        return wan_memory.quantizable_linears(transformer)

    def usage(self, arch: str):
        from cadence.models.card_usage import USAGE

        return USAGE[arch]

    def write_tiny(self, path: Path, arch: str, seed: int = 0) -> Path:
        from cadence.models.tiny import write_tiny_model

        return write_tiny_model(path, arch, seed)


FAMILY = WanFamily(
    name="wan",
    title="Wan",
    archs=ARCHS,
    transformer_classes=("WanTransformer3DModel",),
    keymap=WAN_KEYS,
    aliases=ALIASES,
    block_lists=("blocks",),
    high_precision_parts=wan_memory.HIGH_PRECISION_PARTS,
    encoder_parts=(
        "model_index.json",
        "vae",
        "text_encoder",
        "tokenizer",
        "image_encoder",
        "image_processor",
    ),
)
