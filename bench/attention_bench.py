"""Self-attention kernels of a Wan 14B block on CUDA: what Cadence runs by default against each SDPA backend.

What it compares, on the expert's self-attention (40 heads x 128, bf16) at 33 and 81 frames 480x832, in two
layouts (BHLD contiguous, and the permuted BLHD view diffusers' native backend passes):
- ours: `scaled_dot_product_attention` as `train.attention_backend: native` calls it (PyTorch picks);
- references: the same call pinned to the flash, cuDNN and memory-efficient backends (`sdpa_kernel`).
Forward and forward+backward are timed with CUDA events; the kernels run in rounds (each round one of each,
the order rotating), and per backend the median time and the median of the per-round ratios against ours
are printed with their spread, plus TFLOP/s by the FLOPs of docs/performance.md (4*L^2*d forward, 2.5x that
for backward). So the attention backend choice rests on a measurement. Without CUDA it says so and exits 2.

    python bench/attention_bench.py [--rounds 10] [--tokens 14040,32760]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairing import Spread  # noqa: E402

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def timed_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def runner(backend: SDPBackend | None, q, k, v, grad, backward: bool):
    def forward() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def run() -> None:
        out = forward()
        if backward:
            out.backward(grad)

    if backend is None:
        return run

    def pinned() -> None:
        with sdpa_kernel(backend):
            run()

    return pinned


def measure(q, k, v, grad, backward: bool, rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    """{backend: (times ms, per-round ratios vs ours)}; a backend that fails is left out with a message."""
    names = ["ours", *BACKENDS]
    fns = {"ours": runner(None, q, k, v, grad, backward)}
    for name, backend in BACKENDS.items():
        fn = runner(backend, q, k, v, grad, backward)
        try:
            fn(), fn()  # warm-up (and: does this backend take these inputs at all?)
            torch.cuda.synchronize()
        except RuntimeError as exc:
            print(f"  {name}: failed: {str(exc).splitlines()[0][:100]}")
            names.remove(name)
            continue
        fns[name] = fn
    fns["ours"](), fns["ours"]()
    times: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for index in range(rounds):
        shift = index % len(names)
        this = {n: timed_ms(fns[n]) for n in names[shift:] + names[:shift]}
        for n in names:
            times[n].append(this[n])
            ratios[n].append(this[n] / this["ours"])
    return {n: (times[n], ratios[n]) for n in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tokens", default="14040,32760", help="sequence lengths (33 and 81 frames 480x832)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.stderr.write("attention_bench needs a CUDA GPU (it times CUDA kernels)\n")
        return 2
    heads, head_dim = 40, 128
    print("| tokens | layout | pass | backend | median ms | TFLOP/s | time vs ours (median, IQR) |")
    print("|---|---|---|---|---|---|---|")
    for tokens in (int(t) for t in args.tokens.split(",")):
        flops = 4 * tokens * tokens * heads * head_dim
        for layout in ("BHLD", "BLHD view"):
            shape = (1, heads, tokens, head_dim) if layout == "BHLD" else (1, tokens, heads, head_dim)
            q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            if layout != "BHLD":  # diffusers' layout: a permuted view, as its native backend passes it
                q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            grad = torch.randn(1, heads, tokens, head_dim, device="cuda", dtype=torch.bfloat16)
            for backward, label, work in ((False, "fwd", flops), (True, "fwd+bwd", 3.5 * flops)):
                for name, (times, ratios) in measure(q, k, v, grad, backward, args.rounds).items():
                    ms = statistics.median(times)
                    spread = Spread.of(ratios)
                    print(
                        f"| {tokens} | {layout} | {label} | {name} | {ms:.1f} | {work / ms / 1e9:.0f} | "
                        f"{spread.median:.3f} ({spread.q1:.3f}-{spread.q3:.3f}) |"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
