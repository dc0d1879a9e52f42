"""fp8, uint4, torchao int8 and optimum-quanto weight-only quantization of the tiny A14B transformer.

Measured on the tiny model (3 AdamW steps at lr 1e-2, fp32 compute), asserted with ~2x margin:
relative loss difference per step fp8 <= 2.7e-4, uint4 <= 1.3e-3, int8 <= 5.9e-5, qint8 <= 7.7e-5,
qint4 <= 1.3e-3; distance of the trained LoRA weights from the unquantized run, relative to the distance
training moved them (update_ratio): fp8 0.18, uint4 0.27, int8 0.063, qint8 0.06, qint4 0.25 (Adam
normalises small gradient differences, so this ratio is the sensitive one). A single fp8 Linear's output
differs by < 4% of its largest value. uint4 is compared bit for bit with torchao 0.10's own output
(uint4_torchao010_golden.safetensors, written by make_uint4_golden.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.perf.conftest import make_network, train, update_ratio

from cadence.models import wan_memory
from cadence.perf import Fp8Linear, quantize_linears, quantize_text_encoder, to_fp8
from cadence.perf.fp8 import dequantize_blockwise, quantize_blockwise
from cadence.perf.uint4 import Uint4Linear, dequantize_uint4, pack, quantize_uint4, to_uint4, unpack

GOLDEN = Path(__file__).with_name("uint4_torchao010_golden.safetensors")


@pytest.mark.parametrize("dtype", ["bf16", "fp32", "fp16"])
def test_uint4_matches_torchao_010_bit_for_bit(dtype):
    from safetensors.torch import load_file

    golden = load_file(GOLDEN)
    weight = golden[f"{dtype}.weight"]
    codes, scale, zero_point = quantize_uint4(weight)
    assert torch.equal(codes, golden[f"{dtype}.q"]) and torch.equal(scale, golden[f"{dtype}.scale"])
    assert torch.equal(zero_point.to(torch.int32), golden[f"{dtype}.zero_point"])
    assert torch.equal(unpack(pack(codes)), codes)
    back = dequantize_uint4(unpack(pack(codes)), scale, zero_point, weight.dtype)
    assert torch.equal(back, golden[f"{dtype}.dequantized"])


def test_uint4_linear_packs_two_codes_per_byte_and_keeps_the_module():
    lin = torch.nn.Linear(256, 32).to(torch.bfloat16)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = lin(x)
    same = to_uint4(lin)
    assert same is lin and isinstance(lin, Uint4Linear) and "weight" not in dict(lin.named_parameters())
    stored = sum(b.numel() * b.element_size() for b in (lin.qweight, lin.qscale, lin.qzero))
    assert lin.qweight.shape == (32, 128) and stored / (32 * 256) < 0.6  # bytes per weight (bf16: 2)
    with torch.no_grad():
        out = lin(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.15 and lin.weight.dtype == torch.bfloat16


def test_blockwise_roundtrip_error_bounded_per_block():
    w = torch.randn(64, 300)
    w[:, 0] *= 1000  # an outlier column only inflates its own block's scale
    q, scale = quantize_blockwise(w, 128)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (64, 3, 128) and scale.shape == (64, 3, 1)
    back = dequantize_blockwise(q, scale, 300, torch.float32)
    rel = ((back - w).abs() / w.abs().clamp(min=1e-3))[:, 128:]
    assert float(rel.median()) < 0.04 and float((back - w)[:, 128:].abs().max()) < 0.3


def test_fp8_linear_is_same_module_and_hooks_fire():
    lin = torch.nn.Linear(40, 24)
    x = torch.randn(5, 40)
    ref = lin(x)
    fired = []
    lin.register_forward_hook(lambda *_: fired.append(True))
    same = to_fp8(lin)
    with torch.no_grad():
        out, ref = lin(x), ref.detach()
    assert same is lin and isinstance(lin, Fp8Linear) and isinstance(lin, torch.nn.Linear)
    assert "weight" not in dict(lin.named_parameters()) and lin.qweight.dtype == torch.float8_e4m3fn
    assert fired == [True] and float((out - ref).abs().max() / ref.abs().max()) < 0.04
    assert lin.weight.shape == (24, 40)


def test_high_precision_layers_kept(load_transformer):
    model = load_transformer()
    linears = wan_memory.quantizable_linears(model)
    quantize_linears(model, linears, "fp8")
    names = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    assert (
        names == set(linears) and any(".attn1.to_q" in n for n in names) and any(".ffn." in n for n in names)
    )
    assert not any(wan_memory.keep_high_precision(n) for n in names)
    assert (
        type(model.proj_out) is torch.nn.Linear
        and type(model.condition_embedder.time_proj) is torch.nn.Linear
    )
    assert model.blocks[0].scale_shift_table.dtype == torch.float32


def test_fp8_trains_within_measured_bound(load_transformer, baseline):
    model = load_transformer()
    net = make_network(model)  # LoRA first: fp8 keeps the module objects, so the hooks still fire
    quantize_linears(model, wan_memory.quantizable_linears(model), "fp8")
    losses, weights = train(model, net)
    assert losses != baseline[0]  # it really changed the base weights
    assert losses == pytest.approx(baseline[0], rel=1e-3)
    assert update_ratio(weights, baseline[1], load_transformer) < 0.35


@pytest.mark.parametrize(
    ("qtype", "kind", "loss_bound", "weight_bound"),
    [
        ("uint4", "Uint4Linear", 3e-3, 0.5),
        ("int8", "Int8Tensor", 2e-4, 0.15),
        ("qint8", "QLinear", 2e-4, 0.15),
        ("qint4", "QLinear", 3e-3, 0.5),
    ],
)
def test_quantized_base_trains_within_bound(
    load_transformer, baseline, qtype, kind, loss_bound, weight_bound
):
    model = load_transformer()
    quantize_linears(model, wan_memory.quantizable_linears(model), qtype)  # before LoRA: quanto swaps modules
    layer = model.blocks[0].attn1.to_q
    assert kind in (type(layer).__name__, type(layer.weight).__name__)
    losses, weights = train(model, make_network(model))
    assert losses != baseline[0] and losses == pytest.approx(baseline[0], rel=loss_bound)
    assert update_ratio(weights, baseline[1], load_transformer) < weight_bound


@pytest.mark.parametrize(("qtype", "bound"), [("fp8", 0.1), ("uint4", 0.35), ("int8", 0.1)])
def test_text_encoder_quantized(tiny_folder, qtype, bound):
    """Whole-encoder output error, measured: uint4 0.23 of the largest value (4 bits on every Linear)."""
    from transformers import UMT5EncoderModel

    encoder = UMT5EncoderModel.from_pretrained(
        str(tiny_folder / "text_encoder"), local_files_only=True
    ).eval()
    ids = torch.randint(5, 100, (1, 12))
    with torch.no_grad():
        ref = encoder(ids).last_hidden_state
        quantize_text_encoder(encoder, qtype)
        out = encoder(ids).last_hidden_state
    quantized = [
        m for m in encoder.modules() if isinstance(m, torch.nn.Linear) and type(m) is not torch.nn.Linear
    ]
    quantized += [m for m in encoder.modules() if "torchao" in type(getattr(m, "weight", None)).__module__]
    assert quantized
    assert type(encoder.shared) is torch.nn.Embedding
    assert not torch.equal(out, ref) and float((out - ref).abs().max() / ref.abs().max()) < bound
