"""musubi-tuner's `--lora_weight` merge rules, re-implemented for the tests from reading its code.

Read from kohya-ss/musubi-tuner `src/musubi_tuner/utils/lora_utils.py` (`load_safetensors_with_lora_and_fp8`,
`detect_network_type`) and `networks/{loha,lokr}.py` (`merge_weights_to_tensor`); written independently of
Cadence's adapter code.

* The network type of a file is that of its first key containing `lora_down`, `hada_w1_a` or `lokr_w1`.
* Each DiT weight `<k>.weight` (original Wan names) looks up `lora_unet_<k with . -> _>`.
* LoRA: scale = alpha / down.shape[0] (alpha default = that dim); Linear: W + m·(up @ down)·scale; a weight
  with more dims takes the 1x1-conv branch when down.shape[2:4] == (1, 1), else the 3x3 Conv2d branch
  (`conv2d(down.permute(1, 0, 2, 3), up)`), which fails on a 5-D (Conv3d) kernel.
* LoHa: scale = alpha / hada_w1_b.shape[0]; ΔW = (w1_a @ w1_b) * (w2_a @ w2_b) * scale.
* LoKr: low rank (lokr_w2_a present): scale = alpha / lokr_w2_a.shape[1] (alpha default = that dim);
  full matrices: scale 1; ΔW = kron(w1, w2) * scale.
* Keys no weight used are only warned about (returned here as `unused`); `dora_scale` is never read.
"""

from __future__ import annotations

import torch


def network_type(lora: dict) -> str:
    for key in lora:
        if "lora_down" in key:
            return "lora"
        if "hada_w1_a" in key:
            return "loha"
        if "lokr_w1" in key:
            return "lokr"
    return "lora"


def _f(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


def merged_weights(
    lora: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], multiplier: float = 1.0
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """({weight name: merged weight} for the weights a key changed, unused file keys)."""
    kind, unused, out = network_type(lora), set(lora), {}
    for key, weight in weights.items():
        if not key.endswith(".weight"):
            continue
        name = "lora_unet_" + key.rsplit(".", 1)[0].replace(".", "_")
        w = _f(weight)
        if kind == "loha":
            if f"{name}.hada_w1_a" not in lora:
                continue
            w1a, w1b, w2a, w2b = (_f(lora[f"{name}.hada_{k}"]) for k in ("w1_a", "w1_b", "w2_a", "w2_b"))
            alpha = lora[f"{name}.alpha"].item() if f"{name}.alpha" in lora else w1b.shape[0]
            out[key] = w + multiplier * ((w1a @ w1b) * (w2a @ w2b)) * (alpha / w1b.shape[0])
            used = [f"{name}.hada_{k}" for k in ("w1_a", "w1_b", "w2_a", "w2_b")] + [f"{name}.alpha"]
        elif kind == "lokr":
            if f"{name}.lokr_w1" not in lora:
                continue
            w1 = _f(lora[f"{name}.lokr_w1"])
            if f"{name}.lokr_w2_a" in lora:
                w2a, w2b = _f(lora[f"{name}.lokr_w2_a"]), _f(lora[f"{name}.lokr_w2_b"])
                dim = w2a.shape[1]
                alpha = lora[f"{name}.alpha"].item() if f"{name}.alpha" in lora else dim
                w2, scale = w2a @ w2b, alpha / dim
                used = [f"{name}.lokr_w1", f"{name}.lokr_w2_a", f"{name}.lokr_w2_b", f"{name}.alpha"]
            else:
                w2, scale = _f(lora[f"{name}.lokr_w2"]), 1.0
                used = [f"{name}.lokr_w1", f"{name}.lokr_w2", f"{name}.alpha"]
            out[key] = w + multiplier * torch.kron(w1, w2) * scale
        else:
            down_key, up_key = f"{name}.lora_down.weight", f"{name}.lora_up.weight"
            if down_key not in lora or up_key not in lora:
                continue
            down, up = _f(lora[down_key]), _f(lora[up_key])
            alpha = lora[f"{name}.alpha"].item() if f"{name}.alpha" in lora else down.shape[0]
            scale = alpha / down.shape[0]
            if w.dim() == 2:
                out[key] = w + multiplier * (up @ down) * scale
            elif down.shape[2:4] == (1, 1):
                out[key] = (
                    w
                    + multiplier
                    * (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
                    * scale
                )
            else:
                conved = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
                out[key] = w + multiplier * conved * scale
            used = [down_key, up_key, f"{name}.alpha"]
        unused -= set(used)
    return out, unused
