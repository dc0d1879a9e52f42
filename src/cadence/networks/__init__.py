"""Adapters (LoRA, LoCon, LoKr, LoHa, DoRA; hook-injected, one network per expert) and their file layouts."""

from cadence.networks.formats import LoraFile, LoraTensors, load_lora_file, save_lora_file
from cadence.networks.lora import LoRAModule, LoRANetwork
from cadence.networks.targeting import select_targets
from cadence.networks.tensors import AdapterTensors

__all__ = [
    "AdapterTensors",
    "LoRAModule",
    "LoRANetwork",
    "LoraFile",
    "LoraTensors",
    "load_lora_file",
    "save_lora_file",
    "select_targets",
]
