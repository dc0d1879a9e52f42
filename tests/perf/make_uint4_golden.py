"""Writes uint4_torchao010_golden.safetensors: torchao 0.10.0's own uint4 output, the reference for uint4.py.

Run once with torchao 0.10.0 importable (it is not a Cadence dependency):
    pip download --no-deps torchao==0.10.0 -d /tmp/t && unzip -q /tmp/t/*.whl -d /tmp/tao10
    PYTHONPATH=/tmp/tao10 python tests/perf/make_uint4_golden.py
Weights are random with three edge groups: all zero, constant positive, all negative.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> None:
    import torchao
    from torchao.quantization.quant_api import UIntXWeightOnlyConfig, quantize_

    out = {}
    g = torch.Generator().manual_seed(1234)
    for name, shape, dtype in (
        ("bf16", (48, 320), torch.bfloat16),
        ("fp32", (40, 192), torch.float32),
        ("fp16", (16, 128), torch.float16),
    ):
        w = torch.randn(shape, generator=g) * 0.05
        w[0, :64] = 0.0
        w[1, 64:128] = 0.01
        w[2, :64] = -torch.rand(64, generator=g) * 0.1
        w = w.to(dtype)
        layer = torch.nn.Linear(shape[1], shape[0], bias=False).to(dtype)
        with torch.no_grad():
            layer.weight.copy_(w)
        quantize_(layer, UIntXWeightOnlyConfig(torch.uint4))
        q, scale, zero_point = layer.weight.tensor_impl.get_plain()
        out[f"{name}.weight"] = w.contiguous()
        out[f"{name}.dequantized"] = layer.weight.dequantize().contiguous()
        out[f"{name}.q"] = q.to(torch.uint8).contiguous()
        out[f"{name}.scale"] = scale.contiguous()
        out[f"{name}.zero_point"] = zero_point.contiguous()
    source = f"torchao {torchao.__version__} UIntXWeightOnlyConfig(torch.uint4), group_size 64, CPU"
    save_file(out, str(Path(__file__).with_name("uint4_torchao010_golden.safetensors")), {"source": source})


if __name__ == "__main__":
    main()
