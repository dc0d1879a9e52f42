"""Self-attention kernels of a Wan 14B block on CUDA: PyTorch SDPA's flash, cuDNN and efficient backends.

Shapes are the expert's self-attention (40 heads x 128, bf16) at 33 and 81 frames 480x832. Times forward and
forward+backward with CUDA events (median of repeats) and prints TFLOP/s by the FLOPs of docs/performance.md
(4*L^2*d forward, 2.5x that for backward), so the attention backend choice rests on a measurement.

    python bench/attention_bench.py
"""

from __future__ import annotations

import statistics
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def timed(fn, reps: int = 10) -> float:
    """Median milliseconds of `fn` over `reps` runs after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(backend: SDPBackend, q, k, v, grad) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of SDPA pinned to `backend`."""

    def forward() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    with sdpa_kernel(backend):
        return timed(forward), timed(lambda: forward().backward(grad))


def main() -> int:
    if not torch.cuda.is_available():
        sys.stderr.write("attention_bench needs a CUDA GPU\n")
        return 2
    heads, head_dim = 40, 128
    print("| tokens | layout | backend | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for tokens in (14040, 32760):
        flops = 4 * tokens * tokens * heads * head_dim
        for layout in ("BHLD", "BLHD view"):
            shape = (1, heads, tokens, head_dim) if layout == "BHLD" else (1, tokens, heads, head_dim)
            q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            if layout != "BHLD":  # diffusers' layout: a permuted view, as its native backend passes it
                q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            grad = torch.randn(1, heads, tokens, head_dim, device="cuda", dtype=torch.bfloat16)
            for name, backend in BACKENDS.items():
                try:
                    fwd, total = measure(backend, q, k, v, grad)
                except RuntimeError as exc:
                    print(f"| {tokens} | {layout} | {name} | failed: {str(exc).splitlines()[0][:80]} | | | |")
                    continue
                print(
                    f"| {tokens} | {layout} | {name} | {fwd:.1f} | {flops / fwd / 1e9:.0f} | {total:.1f} | "
                    f"{3.5 * flops / total / 1e9:.0f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
