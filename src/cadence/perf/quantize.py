"""Weight-only quantization of a transformer's block Linears (and of the text encoder).

`fp8` is Cadence's block-scaled e4m3 (fp8.py) and `uint4` its torchao-0.10-exact grouped 4-bit (uint4.py);
both keep the layers as the same objects. `int8` is torchao's `Int8WeightOnlyConfig` (the weight becomes a
torchao tensor subclass inside the same nn.Linear). `qfloat8`/`qint8`/`qint4` use optimum-quanto, which *replaces* each Linear by a `QLinear` (still an nn.Linear subclass): quantize
before building the LoRA network so the hooks attach to the final modules. Which layers are eligible is
the caller's (model-specific) choice: norms, embeddings, head and modulation stay in high precision.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from cadence.perf.fp8 import quantize_linears_fp8
from cadence.perf.uint4 import quantize_linears_uint4

log = logging.getLogger(__name__)

QUANTO = {"qfloat8": "qfloat8", "qint8": "qint8", "qint4": "qint4"}
OWN = {"fp8": quantize_linears_fp8, "uint4": quantize_linears_uint4}


class QuantizeError(ValueError):
    """A qtype that cannot be applied here; the message names the config key and what to do."""


def quantize_linears(
    root: nn.Module, linears: dict[str, nn.Linear], qtype: str, key: str = "model.qtype"
) -> None:
    """Quantize the named Linears of `root` (names relative to `root`) in place with `qtype`."""
    qtype = qtype.lower()
    if qtype in OWN:
        saved = OWN[qtype](linears)
        log.info("%s: %d Linear layers quantized, %.1f MiB saved", qtype, len(linears), saved / 2**20)
        return
    if qtype == "int8":
        quantize_linears_torchao_int8(root, linears, key)
        return
    if qtype not in QUANTO:
        raise QuantizeError(
            f"{key}: {qtype!r} is not implemented; use fp8, uint4, int8, qfloat8, qint8 or qint4"
        )
    try:
        from optimum import quanto
    except ImportError as exc:
        raise QuantizeError(
            f"{key}: {qtype!r} needs optimum-quanto (`pip install optimum-quanto`); or use fp8"
        ) from exc
    weights = getattr(quanto, QUANTO[qtype])
    quanto.quantize(root, weights=weights, include=list(linears))
    quanto.freeze(root)
    modules = dict(root.named_modules())
    for name in linears:
        modules[name].register_forward_hook(_contiguous_grad)
    log.info("%s: %d Linear layers quantized with optimum-quanto", qtype, len(linears))


def _contiguous_grad(_module: nn.Module, _inputs, output):
    """quanto's integer-weight backward (`QBytesTensor` linear, optimum-quanto 0.2.7) `.view`s the output
    gradient, which fails when it is not contiguous: FLUX's and Qwen-Image's blocks split their joint output
    into text and image parts, so the gradient reaching a quantized Linear there is a strided view. The hook
    hands quanto a contiguous copy (the same values)."""
    if isinstance(output, torch.Tensor) and output.requires_grad:
        output.register_hook(lambda grad: grad.contiguous())
    return output


def quantize_linears_torchao_int8(root: nn.Module, linears: dict[str, nn.Linear], key: str) -> None:
    """torchao int8 weight-only (per output channel, symmetric) on the named Linears."""
    torchao_log = logging.getLogger("torchao")
    level = torchao_log.level
    torchao_log.setLevel(
        logging.ERROR
    )  # its import warns about optional fp8/cutlass kernels int8 does not use
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise QuantizeError(f"{key}: 'int8' needs torchao (`pip install torchao`); or use fp8") from exc
    finally:
        torchao_log.setLevel(level)
    before = sum(m.weight.numel() * m.weight.element_size() for m in linears.values())
    wanted = {id(m) for m in linears.values()}
    quantize_(root, Int8WeightOnlyConfig(), filter_fn=lambda module, _name: id(module) in wanted)
    after = sum(m.weight.numel() for m in linears.values())  # one byte per weight (+ a scale per row)
    log.info(
        "int8 (torchao): %d Linear layers quantized, %.1f MiB saved", len(linears), (before - after) / 2**20
    )


def all_linears(root: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear of `root` (the text encoder: its embeddings and norms are not Linears)."""
    return {name: m for name, m in root.named_modules() if type(m) is nn.Linear}


def quantize_text_encoder(encoder: nn.Module, qtype: str) -> None:
    """`model.quantize_te`: weight-only quantization of every Linear of the (frozen) text encoder."""
    with torch.no_grad():
        quantize_linears(encoder, all_linears(encoder), qtype, key="model.qtype_te")
