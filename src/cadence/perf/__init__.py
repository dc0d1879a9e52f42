"""Speed and memory options: attention backend, checkpointing, quantization, block swap, compile.

Generic over models: everything model-specific (which module list holds the blocks, which layers stay in
high precision) comes from the model's family (`cadence.models.family.ModelFamily`). See docs/performance.md.
"""

from cadence.perf.attention import AttentionBackendError, apply_attention_backend
from cadence.perf.block_swap import BlockSwapper
from cadence.perf.checkpointing import enable_checkpointing
from cadence.perf.compile import compile_blocks
from cadence.perf.fp8 import Fp8Linear, to_fp8
from cadence.perf.options import PerfState, apply_memory_options, apply_quantization, set_adapter_dtype
from cadence.perf.quantize import QuantizeError, quantize_linears, quantize_text_encoder

__all__ = [
    "AttentionBackendError",
    "BlockSwapper",
    "Fp8Linear",
    "PerfState",
    "QuantizeError",
    "apply_attention_backend",
    "apply_memory_options",
    "apply_quantization",
    "compile_blocks",
    "enable_checkpointing",
    "quantize_linears",
    "quantize_text_encoder",
    "set_adapter_dtype",
    "to_fp8",
]
