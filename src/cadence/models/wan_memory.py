"""What Cadence's generic speed/memory code (cadence.perf) needs to know about a Wan transformer.

The perf package never branches on model names; it asks these helpers which module list holds the
repeated blocks (checkpointing, block swap, regional compile) and which layers must keep full precision
when the rest is quantized.

Timestep embedding (checked against diffusers 0.42.1 `transformer_wan.py`): the transformer expands the
timestep per token only when it receives a 2-D `timestep` ([B, tokens]); `WanAdapter.predict` builds that
only for TI2V-5B (`expand_timesteps`). Wan 2.1 and Wan 2.2 A14B get a [B] timestep, so the modulation is
[B, 6, dim] per block, not [B, tokens, 6, dim] - no per-token cost.
"""

from __future__ import annotations

from torch import nn

# Submodule names (diffusers' WanTransformer3DModel) that stay in high precision when quantizing:
# norms, the patch/text/time/image embeddings, the output head and the timestep modulation.
HIGH_PRECISION_PARTS = ("norm", "embed", "proj_out", "scale_shift_table", "time_proj", "patch_embedding")


def transformer_blocks(transformer: nn.Module) -> nn.ModuleList:
    """The repeated transformer blocks, in execution order."""
    blocks = getattr(transformer, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(transformer).__name__} has no `blocks` ModuleList; not a Wan transformer")
    return blocks


def keep_high_precision(name: str) -> bool:
    """True for a module (dotted name relative to the transformer) that must not be quantized."""
    return any(part in name for part in HIGH_PRECISION_PARTS)


def quantizable_linears(transformer: nn.Module) -> dict[str, nn.Linear]:
    """Linear layers inside the blocks that may be stored quantized (attention and feed-forward)."""
    out: dict[str, nn.Linear] = {}
    for i, block in enumerate(transformer_blocks(transformer)):
        for name, module in block.named_modules():
            full = f"blocks.{i}.{name}"
            if isinstance(module, nn.Linear) and not keep_high_precision(full):
                out[full] = module
    return out


def expands_timestep_per_token(arch: str) -> bool:
    """Only TI2V-5B gives each token its own timestep (first-frame tokens are clean)."""
    return arch == "wan22_5b"
