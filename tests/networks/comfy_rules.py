"""ComfyUI's LoRA/LyCORIS loading rules, re-implemented for the tests from reading its code.

Read from comfyanonymous/ComfyUI `comfy/lora.py` (`load_lora`, `model_lora_keys_unet`) and
`comfy/weight_adapter/{base,lora,loha,lokr}.py`; written independently of Cadence's adapter code, so a test
can rebuild from a file alone the weight change ComfyUI would apply and compare it with the trained module's.

* Key map (Wan and every model): a base weight `diffusion_model.{k}.weight` is targeted by the file prefixes
  `diffusion_model.{k}` and `lora_unet_{k with . -> _}`.
* Per prefix x: `x.alpha` (a scalar, `.item()`), `x.dora_scale`, then the first adapter whose keys are there:
  LoRA `x.lora_up.weight`/`x.lora_down.weight` (also `x.lora_B.weight`/`x.lora_A.weight`), LoHa
  `x.hada_w1_a` ..., LoKr `x.lokr_w1` / `x.lokr_w2[_a|_b]`.
* Scale: LoRA alpha / lora_down.shape[0]; LoHa alpha / hada_w1_b.shape[0]; LoKr alpha / (rank of the
  factorized half, w1_b or w2_b .shape[0]) and 1 when neither half is factorized; no alpha -> 1.
* ΔW: LoRA up.flatten(1) @ down.flatten(1); LoHa (w1_a @ w1_b) * (w2_a @ w2_b); LoKr kron(w1, w2) (w1 unsqueezed
  twice when w2 is 4-D); reshaped to the weight's shape, times strength · scale.
* DoRA (`weight_decompose`): W_c = W + scale·ΔW; the norm is W_c's per input column, unless dora_scale has as
  many rows as W: then ComfyUI takes the *base* weight's row norms (‖W‖, not ‖W_c‖), plus fp32 eps;
  W' = W_c · dora_scale / norm; with strength s: W + s (W' - W).
* Keys no adapter used are logged as "lora key not loaded" (returned here as `unused`).
"""

from __future__ import annotations

import torch


def key_map(weight_names: list[str]) -> dict[str, str]:
    """File prefix -> base weight name, for base weights named `diffusion_model.<k>.weight`."""
    out = {}
    for name in weight_names:
        if name.startswith("diffusion_model.") and name.endswith(".weight"):
            k = name[len("diffusion_model.") : -len(".weight")]
            out[f"lora_unet_{k.replace('.', '_')}"] = name
            out[f"diffusion_model.{k}"] = name
    return out


def _get(lora: dict, key: str, used: set):
    if key in lora:
        used.add(key)
        return lora[key].to(torch.float32)
    return None


def _adapter_delta(x: str, lora: dict, used: set, shape) -> tuple[torch.Tensor, float] | None:
    """(unscaled ΔW, scale) of the adapter at prefix x, or None."""
    alpha = lora[f"{x}.alpha"].item() if f"{x}.alpha" in lora else None
    if f"{x}.alpha" in lora:
        used.add(f"{x}.alpha")
    for up_key, down_key in (("lora_up.weight", "lora_down.weight"), ("lora_B.weight", "lora_A.weight")):
        up = _get(lora, f"{x}.{up_key}", used)
        if up is not None:
            down = _get(lora, f"{x}.{down_key}", used)
            scale = alpha / down.shape[0] if alpha is not None else 1.0
            return (up.flatten(start_dim=1) @ down.flatten(start_dim=1)).reshape(shape), scale
    w1a = _get(lora, f"{x}.hada_w1_a", used)
    if w1a is not None:
        w1b, w2a, w2b = (_get(lora, f"{x}.{k}", used) for k in ("hada_w1_b", "hada_w2_a", "hada_w2_b"))
        scale = alpha / w1b.shape[0] if alpha is not None else 1.0
        return ((w1a @ w1b) * (w2a @ w2b)).reshape(shape), scale
    keys = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")
    w1, w2, w1a, w1b, w2a, w2b = (_get(lora, f"{x}.{k}", used) for k in keys)
    if w1 is None and w2 is None and w1a is None and w2a is None:
        return None
    dim = None
    if w1 is None:
        dim, w1 = w1b.shape[0], w1a @ w1b
    if w2 is None:
        dim, w2 = w2b.shape[0], w2a @ w2b
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return torch.kron(w1, w2).reshape(shape), scale


def _decompose(dora_scale, weight, diff, strength) -> torch.Tensor:
    calc = weight + diff
    if dora_scale.shape[0] == calc.shape[0]:  # ComfyUI's output-axis branch: the base weight's norm
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        norm = (
            calc.transpose(0, 1)
            .reshape(calc.shape[1], -1)
            .norm(dim=1, keepdim=True)
            .reshape(calc.shape[1], *[1] * (calc.dim() - 1))
            .transpose(0, 1)
        )
    norm = norm + torch.finfo(weight.dtype).eps
    calc = calc * (dora_scale.to(torch.float32) / norm)
    return weight + strength * (calc - weight)


def patched_weights(
    lora: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], strength: float = 1.0
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """({base weight name: patched weight (fp32)}, unused file keys) as ComfyUI's loader computes them."""
    mapping = key_map(list(weights))
    used: set[str] = set()
    patched = {}
    for x, target in mapping.items():
        base = weights[target].to(torch.float32)
        found = _adapter_delta(x, lora, used, base.shape)
        if found is None:
            continue
        diff, scale = found
        dora = _get(lora, f"{x}.dora_scale", used)
        if dora is not None:
            patched[target] = _decompose(dora, base, diff * scale, strength)
        else:
            patched[target] = base + strength * scale * diff
    return patched, set(lora) - used
