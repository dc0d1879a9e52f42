"""CUDA correctness of the speed/memory options on a small random Wan 2.2 I2V A14B expert.

What only a GPU can show: bf16 numerics against a float64 reference, each attention backend's output and
gradients, block swap's side-stream copies (same results as the plain run, less memory), fp8 and compiled
(inductor) blocks against the plain bf16 run. Each row prints the measured relative difference and the bound
it must stay under; the exit code is 1 when any row fails. On CPU it refuses (the CPU tests cover CPU).

    python bench/gpu_checks.py [--json $OUT/checks.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpu_step import build_expert  # noqa: E402

from cadence.config.schema import NetworkConfig  # noqa: E402
from cadence.models import wan_memory  # noqa: E402
from cadence.networks.lora import LoRANetwork  # noqa: E402
from cadence.perf import (  # noqa: E402
    BlockSwapper,
    apply_attention_backend,
    compile_blocks,
    enable_checkpointing,
    quantize_linears,
)

DIMS = {
    "heads": 8,
    "head_dim": 64,
    "ffn": 2048,
    "layers": 6,
    "text_dim": 256,
    "freq_dim": 256,
    "text_len": 64,
}
LATENT = (5, 24, 40)  # 17 frames at 192x320: 5 * 12 * 20 = 1200 tokens


@dataclass
class Check:
    name: str
    value: float
    bound: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.value == self.value and self.value <= self.bound  # NaN never passes


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def inputs(device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 36, *LATENT, device=device, generator=g),
        "encoder_hidden_states": torch.randn(
            1, DIMS["text_len"], DIMS["text_dim"], device=device, generator=g
        ),
        "target": torch.randn(1, 16, *LATENT, device=device, generator=g),
    }


def expert_with_lora(device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, LoRANetwork]:
    """Same weights for every dtype (drawn in fp32 from one seed, then cast); LoRA `up` non-zero so every
    LoRA gradient is non-zero."""
    model = build_expert(DIMS, device, dtype)
    net = (
        LoRANetwork(model, NetworkConfig(linear=16, linear_alpha=16), name="check", seed=0).apply().to(device)
    )
    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():
        for m in net.modules_by_name.values():
            m.up.copy_(torch.randn(m.up.shape, generator=g) * 0.02)
    return model, net


def forward_loss(
    model: torch.nn.Module, batch: dict, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(
        hidden_states=batch["hidden_states"].to(dtype),
        timestep=torch.tensor([600.0], device=batch["target"].device),
        encoder_hidden_states=batch["encoder_hidden_states"].to(dtype),
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(out.double(), batch["target"].double()), out.detach()


def loss_and_grads(model, net: LoRANetwork, batch: dict, dtype: torch.dtype):
    loss, out = forward_loss(model, batch, dtype)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    return loss.detach(), out, grads


def tensors_rel(a: dict, b: dict) -> float:
    """Relative L2 difference over a whole set of tensors (gradients or LoRA weights)."""
    num = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in b)
    den = sum(float(b[k].double().norm() ** 2) for k in b)
    return (num / den) ** 0.5


def train_steps(model, net, device, dtype, steps: int = 3) -> tuple[list[float], dict[str, torch.Tensor]]:
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        loss, _ = forward_loss(model, inputs(device, 100 + step), dtype)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, {k: v.detach().clone() for k, v in net.state_dict().items()}


def numerics(device: torch.device) -> list[Check]:
    checks: list[Check] = []
    batch = inputs(device, 0)
    cuda = device.type == "cuda"
    low = torch.bfloat16 if cuda else torch.float32  # --cpu: a smoke run of this script, not a check
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    ref_model, ref_net = expert_with_lora(device, torch.float32)
    ref_model, ref_net = ref_model.double(), ref_net.double()
    apply_attention_backend([ref_model], "native", device)
    ref_loss, ref_out, ref_grads = loss_and_grads(ref_model, ref_net, batch, torch.float64)
    del ref_model, ref_net

    model, net = expert_with_lora(device, torch.float32)
    loss, out, grads = loss_and_grads(model, net, batch, torch.float32)
    checks += [
        Check("fp32 output vs float64", rel(out, ref_out), 1e-4),
        Check("fp32 LoRA grads vs float64", tensors_rel(grads, ref_grads), 1e-3),
    ]
    del model, net

    for backend in ("native", "cudnn", "_native_flash", "_native_efficient") if cuda else ("native",):
        model, net = expert_with_lora(device, low)
        if backend.startswith("_"):
            model.set_attention_backend(backend)
        else:
            apply_attention_backend([model], backend, device)
        loss, out, grads = loss_and_grads(model, net, batch, low)
        checks += [
            Check(f"bf16 {backend} output vs float64", rel(out, ref_out), 2e-2),
            Check(f"bf16 {backend} LoRA grads vs float64", tensors_rel(grads, ref_grads), 5e-2),
        ]
        del model, net

    # options against the plain bf16 run: three AdamW steps, LoRA weights compared
    def run(setup) -> tuple[list[float], dict, float, dict]:
        model, net = expert_with_lora(device, low)
        init = {k: v.detach().clone() for k, v in net.state_dict().items()}
        extra = setup(model, net)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        losses, state = train_steps(model, net, device, low)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0.0
        if isinstance(extra, BlockSwapper):
            extra.remove()
        del model, net, extra
        gc.collect()  # LoRA hooks and the model reference each other: free them before the next run
        torch._dynamo.reset()
        if cuda:
            torch.cuda.empty_cache()
        return losses, state, peak, init

    def ckpt(model, net):
        enable_checkpointing(model, wan_memory.transformer_blocks(model), True)

    def offload(model, net):
        enable_checkpointing(model, wan_memory.transformer_blocks(model), True, offload=True)

    def keep_attention(model, net):
        enable_checkpointing(model, wan_memory.transformer_blocks(model), True, keep_attention=True)

    def swap(model, net):
        ckpt(model, net)
        return BlockSwapper(wan_memory.transformer_blocks(model), DIMS["layers"] - 1, device)

    def swap_no_ckpt(model, net):
        return BlockSwapper(wan_memory.transformer_blocks(model), DIMS["layers"] - 1, device)

    def fp8(model, net):
        ckpt(model, net)
        quantize_linears(model, wan_memory.quantizable_linears(model), "fp8")

    def compiled(model, net):
        ckpt(model, net)
        compile_blocks(wan_memory.transformer_blocks(model), 32, backend="inductor" if cuda else "aot_eager")

    plain = run(lambda m, n: None)
    again = run(lambda m, n: None)
    with_ckpt = run(ckpt)

    def moved(result, base) -> float:
        """||result - base|| / ||base - init||: the option's difference relative to training's own move."""
        update = {k: base[1][k] - base[3][k] for k in base[1]}
        return tensors_rel({k: result[1][k] - base[3][k] for k in base[1]}, update)

    noise = moved(again, plain)
    checks.append(Check("plain bf16 run repeated (noise floor)", noise, 0.05))
    floor = max(noise, 1e-6)
    for name, result, bound, base in (
        ("checkpointing vs plain", with_ckpt, floor * 2 + 1e-6, plain),
        ("checkpoint offload vs checkpointed", run(offload), floor * 2 + 1e-6, with_ckpt),
        ("checkpoint keeping attention vs checkpointed", run(keep_attention), floor * 2 + 1e-6, with_ckpt),
        ("block swap (checkpointed) vs checkpointed", run(swap), floor * 2 + 1e-6, with_ckpt),
        ("block swap (no checkpointing) vs plain", run(swap_no_ckpt), floor * 2 + 1e-6, plain),
        ("fp8 base vs bf16", run(fp8), 0.35, with_ckpt),
        ("compile (inductor) vs eager", run(compiled), 0.35, with_ckpt),
    ):
        loss_diff = max(abs(a - b) / abs(b) for a, b in zip(result[0], base[0], strict=True))
        checks.append(
            Check(
                f"{name}: LoRA diff / update after 3 steps",
                moved(result, base),
                bound,
                f"max loss rel diff {loss_diff:.2e}; peak {result[2]:.0f} MiB vs {base[2]:.0f} MiB",
            )
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cpu", action="store_true", help="smoke-run this script on the CPU (fp32; not a check)")
    args = ap.parse_args(argv)
    if not (torch.cuda.is_available() or args.cpu):
        sys.stderr.write("gpu_checks needs a CUDA GPU (or --cpu for a smoke run of the script)\n")
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    checks = numerics(device)
    width = max(len(c.name) for c in checks)
    for c in checks:
        status = "ok  " if c.ok else "FAIL"
        sys.stdout.write(f"{status} {c.name:<{width}}  {c.value:.3e}  (bound {c.bound:.1e})  {c.detail}\n")
    if args.json:
        args.json.write_text(json.dumps([asdict(c) | {"ok": c.ok} for c in checks], indent=1))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
