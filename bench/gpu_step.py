"""One LoRA training step of a Wan 2.2 I2V A14B expert with random weights, for each speed/memory option.

On CUDA the expert is full size (built on the meta device, materialised on the GPU with random weights: no
download) and the results table replaces the marked section of docs/performance.md. On CPU a small config
runs the same code (tests/perf/test_bench.py) and writes only where --out says.

    python bench/gpu_step.py                                  # CUDA: full size, 33 and 81 frames at 480x832
    python bench/gpu_step.py --frames 81 --options fp8 fp8+swap --json $OUT/r81.json
    python bench/gpu_step.py --render r33.json r81.json       # results of several runs -> one table
    python bench/gpu_step.py --small --out /tmp/p.md

An option is '+'-joined features over the default (bf16, gradient checkpointing on every block, native
SDPA, Cadence's LoRA rank 16 on every block Linear): `cudnn` / `flash` attention, `nockpt`, `offload`
(gradient_checkpointing_offload), `keepattn` (gradient_checkpointing_keep_attention; --keep-blocks K keeps
it in the first K blocks only), `fp8` / `uint4` /
`int8` base weights, `swap` (blocks_to_swap, --swap N), `compile` (regional, inductor), `peft` (the same
LoRA through PEFT instead of Cadence's hooks: the reference implementation most trainers use), `nolora` (no
adapter at all, the input requires grad: the frozen base's forward + input-gradient backward, so the LoRA's
own cost is the difference to the same option with it).

Not interleaved (issue 23): each option builds its own full-size expert (27 GiB in bf16), and two do not fit
beside each other with their activations, so options run one after another (a median of `--steps` steps
after warm-up each); on a dedicated GPU the drift between rows is small, on a shared one compare rows of
one run only. The CPU benches (train_step_bench.py etc.) interleave.

Step FLOPs follow docs/performance.md: F_linear = blocks*(L*(12d^2 + 4*d*ffn) + 4*T*d^2),
F_attn = blocks*(4*L^2*d + 4*L*T*d); a frozen-base LoRA step = 2*F_linear + 3.5*F_attn ("MFU"), plus one
more forward (F_linear + F_attn) when checkpointing recomputes it ("HFU").
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cadence.config.schema import NetworkConfig  # noqa: E402
from cadence.models import wan_memory  # noqa: E402
from cadence.networks.lora import LoRANetwork  # noqa: E402
from cadence.perf import (  # noqa: E402
    AttentionBackendError,
    BlockSwapper,
    apply_attention_backend,
    compile_blocks,
    enable_checkpointing,
    quantize_linears,
)

log = logging.getLogger("gpu_step")
MARK_START, MARK_END = "<!-- bench:gpu_step:start -->", "<!-- bench:gpu_step:end -->"
# dense bf16 spec; the most specific name that appears in the device name wins
PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "RTX 4090": 165.0,
}
FULL = {
    "heads": 40,
    "head_dim": 128,
    "ffn": 13824,
    "layers": 40,
    "text_dim": 4096,
    "freq_dim": 256,
    "text_len": 512,
}
SMALL = {"heads": 2, "head_dim": 12, "ffn": 48, "layers": 4, "text_dim": 32, "freq_dim": 32, "text_len": 16}
QTYPES = ("fp8", "uint4", "int8")
FEATURES = ("cudnn", "flash", "nockpt", "offload", "keepattn", *QTYPES, "swap", "compile", "peft", "nolora")
DEFAULT_OPTIONS = ("baseline", "cudnn", "flash", "nockpt", "fp8", "fp8+swap", "compile", "peft")


@dataclass
class Result:
    option: str
    frames: int
    tokens: int
    step_s: float | None = None
    mfu: float | None = None
    hfu: float | None = None
    peak_alloc_gib: float | None = None
    peak_reserved_gib: float | None = None
    weights_gib: float | None = None
    note: str = ""


def features(option: str) -> set[str]:
    """The feature set of an option name ('baseline' = none); unknown features are an error."""
    parts = set() if option == "baseline" else set(option.split("+"))
    unknown = parts - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown bench feature(s) {sorted(unknown)} in {option!r}; use {FEATURES}")
    return parts


def build_expert(dims: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A Wan 2.2 I2V A14B expert with random weights: meta construction, then filled on `device`."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=dims["heads"],
            attention_head_dim=dims["head_dim"],
            in_channels=36,
            out_channels=16,
            text_dim=dims["text_dim"],
            freq_dim=dims["freq_dim"],
            ffn_dim=dims["ffn"],
            num_layers=dims["layers"],
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        )
    model = model.to(dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, module in model.named_modules():  # as from_pretrained(torch_dtype=...) keeps them
        if keep & set(name.split(".")):
            module.float()
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():  # drawn in fp32 one tensor at a time: the same weights whatever `dtype` is
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.empty(p.shape, device=device).normal_(0.0, 0.02, generator=gen))
        model.rope.__init__(model.rope.attention_head_dim, model.rope.patch_size, model.rope.max_seq_len)
    model.rope.to(device)
    return model.requires_grad_(False).train()


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
    return (frames - 1) // 4 + 1, height // 8, width // 8


def step_flops(dims: dict, tokens: int, checkpointing: bool, kept_blocks: int = 0) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one step; the recompute skips self-attention in `kept_blocks` blocks."""
    d, ffn, n, t = dims["heads"] * dims["head_dim"], dims["ffn"], dims["layers"], dims["text_len"]
    f_lin = n * (tokens * (12 * d * d + 4 * d * ffn) + 4 * t * d * d)
    f_self, f_cross = n * 4 * tokens * tokens * d, n * 4 * tokens * t * d
    model = 2 * f_lin + 3.5 * (f_self + f_cross)
    recompute = f_lin + f_cross + f_self * (n - min(kept_blocks, n)) / n
    return model, model + (recompute if checkpointing else 0.0)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)


def attach_peft(model: torch.nn.Module, targets: list[str]) -> list[torch.nn.Parameter]:
    """The same rank-16 LoRA through PEFT (`inject_adapter_in_model`: adapter weights in the base layer's dtype)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=targets), model)
    return [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def kept_blocks(feats: set[str], dims: dict, keep: int | None) -> int:
    """Blocks that keep self-attention: none without `keepattn`, else --keep-blocks or all."""
    return 0 if "keepattn" not in feats else min(keep or dims["layers"], dims["layers"])


def prepare(option: str, dims: dict, device: torch.device, dtype: torch.dtype, swap: int, keep: int | None):
    """Model + LoRA parameters with `option` applied, in the order train setup uses."""
    feats = features(option)
    model = build_expert(dims, device, dtype)
    blocks = wan_memory.transformer_blocks(model)
    for qtype in feats & set(QTYPES):
        quantize_linears(model, wan_memory.quantizable_linears(model), qtype)
    net = LoRANetwork(model, NetworkConfig(linear=16, linear_alpha=16), name="bench", seed=0)
    if "nolora" in feats:  # the frozen base alone: backward still runs through every block (input gradient)
        params = []
    elif "peft" in feats:
        params = attach_peft(model, [n.removeprefix("transformer.") for n in net.modules_by_name])
        params = [p.to(device) for p in params]
    else:
        params = list(net.apply().to(device).trainable_parameters())
    attention = "cudnn" if "cudnn" in feats else "flash" if "flash" in feats else "native"
    apply_attention_backend([model], attention, device)
    enable_checkpointing(
        model,
        blocks,
        "nockpt" not in feats,
        offload="offload" in feats,
        keep_attention=kept_blocks(feats, dims, keep) or False,
    )
    swapper = BlockSwapper(blocks, swap, device) if "swap" in feats else None
    if "compile" in feats:
        compile_blocks(blocks, 32, backend="inductor" if device.type == "cuda" else "aot_eager")
    return model, params, swapper


def run_option(
    option: str,
    frames: int,
    size: tuple[int, int],
    dims: dict,
    device: torch.device,
    dtype: torch.dtype,
    steps: int,
    warmup: int,
    swap: int,
    profile: bool = False,
    keep: int | None = None,
) -> Result:
    feats = features(option)
    lat = latent_shape(frames, *size)
    tokens = lat[0] * (lat[1] // 2) * (lat[2] // 2)
    kept = kept_blocks(feats, dims, keep)
    notes = [f"blocks_to_swap {swap}"] * ("swap" in feats) + [f"keep_attention {kept}"] * (
        0 < kept < dims["layers"]
    )
    result = Result(option, frames, tokens, note=", ".join(notes))
    try:
        model, params, swapper = prepare(option, dims, device, dtype, swap, keep)
    except AttentionBackendError as exc:
        result.note = str(exc).split(";")[0]
        return result
    if device.type == "cuda":
        result.weights_gib = torch.cuda.memory_allocated(device) / 2**30
    opt = torch.optim.AdamW(params, lr=1e-5) if params else None
    hidden = torch.randn(1, 36, *lat, device=device, dtype=dtype, requires_grad="nolora" in feats)
    text = torch.randn(1, dims["text_len"], dims["text_dim"], device=device, dtype=dtype)
    target = torch.randn(1, 16, *lat, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        for i in range(warmup + steps):
            if profile and i == warmup + steps - 1:
                profiler = torch.profiler.profile(record_shapes=False).__enter__()
            start = time.perf_counter()
            out = model(
                hidden_states=hidden,
                timestep=torch.tensor([500.0], device=device),
                encoder_hidden_states=text,
                return_dict=False,
            )[0]
            torch.nn.functional.mse_loss(out.float(), target).backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        if profile:
            profiler.__exit__(None, None, None)
            sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            sys.stdout.write(f"{option}:\n{profiler.key_averages().table(sort_by=sort, row_limit=18)}\n")
    except torch.OutOfMemoryError:
        result.note = ", ".join(filter(None, [result.note, "out of memory"]))
    if times:
        result.step_s = statistics.median(times)
        peak = peak_tflops(device)
        model_f, hw_f = step_flops(dims, tokens, "nockpt" not in feats, kept)
        if peak:
            result.mfu = model_f / result.step_s / (peak * 1e12)
            result.hfu = hw_f / result.step_s / (peak * 1e12)
    if device.type == "cuda":
        result.peak_alloc_gib = torch.cuda.max_memory_allocated(device) / 2**30
        result.peak_reserved_gib = torch.cuda.max_memory_reserved(device) / 2**30
    if swapper is not None:
        swapper.remove()  # its hooks and the blocks reference each other
    del model, params, opt, swapper
    gc.collect()  # LoRA hooks and the model reference each other: free the cycle before the next option
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.info("%s", result)
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def environment(device: torch.device, size: tuple[int, int], dims: dict, dtype: torch.dtype) -> dict:
    """What the figures were measured on, including the measured bf16 matmul ceiling on CUDA."""
    import diffusers

    env = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "CPU (small config, not a GPU figure)",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "size": list(size),
        "blocks": dims["layers"],
        "dim": dims["heads"] * dims["head_dim"],
        "dtype": str(dtype).removeprefix("torch."),
        "matmul_tflops": None,
        "peak_tflops": peak_tflops(device),
    }
    if device.type == "cuda":
        env["matmul_tflops"] = matmul_ceiling(device)
    return env


def matmul_ceiling(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """Measured dense bf16 matmul rate (TFLOP/s) on random data: the practical ceiling for MFU."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def markdown(results: list[Result], env: dict) -> str:
    ceiling = (
        f"; measured bf16 matmul ceiling {env['matmul_tflops']:.0f} TFLOP/s" if env["matmul_tflops"] else ""
    )
    peak = env.get("peak_tflops", 989.0 if "H100" in env["device"] else None)  # earlier JSON: H100 SXM only
    spec = (
        f"MFU/HFU against the {peak:.0f} TFLOP/s dense bf16 spec." if peak else "No bf16 spec known: no MFU."
    )
    lines = [
        f"Measured {env['date']} on {env['device']}; torch {env['torch']}, diffusers {env['diffusers']}; "
        f"{env['size'][0]}x{env['size'][1]}, {env['blocks']} blocks, dim {env['dim']}, {env['dtype']} base, LoRA rank 16 "
        f"on every block Linear{ceiling}. {spec}",
        "",
        "| option | frames | tokens | median step (s) | tokens/s | MFU | HFU | weights (GiB) | peak alloc (GiB) "
        "| peak reserved (GiB) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tps = None if r.step_s is None else r.tokens / r.step_s
        lines.append(
            f"| {r.option} | {r.frames} | {r.tokens} | {_fmt(r.step_s, '.3f')} | {_fmt(tps, '.0f')} | "
            f"{_fmt(r.mfu, '.1%')} | {_fmt(r.hfu, '.1%')} | {_fmt(r.weights_gib, '.1f')} | "
            f"{_fmt(r.peak_alloc_gib, '.1f')} | {_fmt(r.peak_reserved_gib, '.1f')} | {r.note} |"
        )
    return "\n".join(lines)


def write_section(path: Path, table: str) -> None:
    """Replace the marked section of `path` (or write a file holding only the table)."""
    text = path.read_text(encoding="utf-8") if path.exists() else f"{MARK_START}\n{MARK_END}\n"
    head, _, rest = text.partition(MARK_START)
    _, _, tail = rest.partition(MARK_END)
    path.write_text(f"{head}{MARK_START}\n{table}\n{MARK_END}{tail}", encoding="utf-8")


def render(paths: list[Path]) -> tuple[list[Result], dict]:
    """Results and environment of earlier --json runs (the environment of the first)."""
    results, env = [], None
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        env = env or data["environment"]
        results += [Result(**r) for r in data["results"]]
    return results, env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny dims (forced on CPU)")
    ap.add_argument("--frames", type=int, nargs="+", default=None)
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    ap.add_argument("--options", nargs="+", default=list(DEFAULT_OPTIONS), help=f"features: {FEATURES}")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--swap", type=int, default=None, help="blocks_to_swap for options with swap")
    ap.add_argument("--keep-blocks", type=int, default=None, help="keepattn in the first K blocks only")
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks (profiling; FLOPs follow)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of the last step")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--render", type=Path, nargs="+", default=None, help="table from earlier --json files")
    ap.add_argument(
        "--out", type=Path, default=None, help="markdown file (CUDA default: docs/performance.md)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.render:
        results, env = render(args.render)
        table = markdown(results, env)
        sys.stdout.write(table + "\n")
        write_section(args.out or ROOT / "docs" / "performance.md", table)
        return 0
    for option in args.options:
        features(option)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = args.small or device.type != "cuda"
    dims = dict(SMALL if small else FULL)
    dims["layers"] = args.layers or dims["layers"]
    size = tuple(args.size or ((64, 64) if small else (480, 832)))
    frames = args.frames or ([5] if small else [33, 81])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    swap = args.swap or (dims["layers"] // 2)
    env = environment(device, size, dims, dtype)
    results = [
        run_option(
            o, f, size, dims, device, dtype, args.steps, args.warmup, swap, args.profile, args.keep_blocks
        )
        for f in frames
        for o in args.options
    ]
    table = markdown(results, env)
    sys.stdout.write(table + "\n")
    if args.json is not None:
        payload = {"environment": env, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    out = args.out or (ROOT / "docs" / "performance.md" if device.type == "cuda" else None)
    if out is not None:
        write_section(out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
