"""Accuracy-recovery adapters: ai-toolkit's `qtype: "uint4|FILE"`, a frozen LoRA over the uint4 base.

An adapter of this kind was trained, layer by layer, to add back what uint4 quantization took from each
Linear, so it only fits the quantization it was made for (uint4.py reproduces it bit for bit). It follows
ai-toolkit's conventions, which its files assume:
- FILE is a local path, else `owner/repo/file.safetensors` fetched from the Hugging Face Hub;
- one file covers every expert: keys carry `transformer_N.` after their prefix for the N-th expert of the
  model's expert table (Wan 2.2: 1 = high noise `transformer`, 2 = low noise `transformer_2`); a file
  without it applies to a single-expert model;
- the scale is 1 (alpha = rank): `.alpha` tensors are ignored, as ai-toolkit ignores them;
- only the layers the file names are quantized, the adapter is never trained, and it is never written into
  the trained LoRA files (a LoRA trained this way is meant for the full-precision model at inference).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from cadence.networks.formats import parse_lora_tensors, read_safetensors
from cadence.networks.lora import LoRANetwork
from cadence.networks.tensors import AdapterTensors

log = logging.getLogger(__name__)

EXPERT_KEY = re.compile(r"^([A-Za-z_]+)\.transformer_(\d+)\.")


def resolve_adapter_file(spec: str) -> Path:
    """A local file, else `owner/repo/path` downloaded from the Hub (cached); errors say what to do."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    parts = spec.split("/")
    if len(parts) < 3 or path.is_absolute():
        raise FileNotFoundError(f"model.qtype: accuracy-recovery adapter file not found: {spec}")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # offline, unknown repo, no access: one message that says what to do
        raise FileNotFoundError(
            f"model.qtype: accuracy-recovery adapter {spec!r} is not a local file and could not be fetched "
            f"from the Hugging Face Hub ({type(exc).__name__}); download it (`hf download {repo} {filename}`) "
            "and put its local path after '|'"
        ) from exc


def read_recovery_adapter(path: Path, experts: list[str]) -> dict[str, dict[str, AdapterTensors]]:
    """{expert name: {module name: tensors at scale 1}} from one adapter file."""
    tensors, meta = read_safetensors(path)
    per_expert: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = EXPERT_KEY.match(key)
        if match:
            index = int(match.group(2))
            if not 1 <= index <= len(experts):
                raise ValueError(
                    f"{path}: key {key!r} is for transformer_{index}, the model has {len(experts)} expert(s)"
                )
            expert, key = experts[index - 1], f"{match.group(1)}.{key[match.end() :]}"
        elif len(experts) == 1:
            expert = experts[0]
        else:
            raise ValueError(
                f"{path}: key {key!r} does not say which expert it is for; a file for this {len(experts)}-expert "
                "model names transformer_1 ... in its keys (ai-toolkit's layout)"
            )
        if not key.endswith(".alpha"):
            per_expert.setdefault(expert, {})[key] = value
    out = {}
    for expert, group in per_expert.items():
        modules = parse_lora_tensors(group, meta, path).modules
        out[expert] = {n: t.with_alpha(float(t.rank)) for n, t in modules.items()}
    return out


def attach_recovery_adapter(
    transformer: nn.Module,
    modules: dict[str, AdapterTensors],
    name: str,
    device: torch.device,
    dtype: torch.dtype,
) -> LoRANetwork:
    """A frozen network on exactly `modules`, in the base's dtype, hooked in and in eval mode."""
    ranks = sorted({t.rank for t in modules.values()})
    if len(ranks) != 1 or {t.algo for t in modules.values()} != {"lora"}:
        raise ValueError(
            f"accuracy-recovery adapter for {name}: one LoRA rank expected, the file has {ranks}"
        )
    net = LoRANetwork.from_tensors(transformer, modules, f"{name}_recovery")
    net.to(device=device, dtype=dtype).requires_grad_(False).eval()
    net.apply()
    log.info(
        "accuracy-recovery adapter on %s: %d layers, rank %d, scale 1 (frozen)", name, len(modules), ranks[0]
    )
    return net
