"""bench/gpu_step.py runs its small config on CPU and writes its table into the marked section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "bench" / "gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_step"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_flops_formula_matches_design_notes():
    bench = _bench()
    assert bench.latent_shape(33, 480, 832) == (9, 60, 104)
    assert 9 * 30 * 52 == 14040 and 21 * 30 * 52 == 32760
    model, hw = bench.step_flops(bench.FULL, 14040, checkpointing=True)
    d, ffn, lin_tokens = 5120, 13824, 14040
    f_lin = 40 * (lin_tokens * (12 * d * d + 4 * d * ffn) + 4 * 512 * d * d)
    f_attn = 40 * (4 * lin_tokens**2 * d + 4 * lin_tokens * 512 * d)
    assert model == 2 * f_lin + 3.5 * f_attn and hw == model + f_lin + f_attn
    f_self = 40 * 4 * lin_tokens**2 * d
    assert bench.step_flops(bench.FULL, 14040, True, kept_blocks=40) == (model, hw - f_self)
    assert bench.step_flops(bench.FULL, 14040, True, kept_blocks=10)[1] == pytest.approx(hw - f_self / 4)


def test_bench_runs_small_and_writes_section(tmp_path):
    bench = _bench()
    out = tmp_path / "perf.md"
    out.write_text(f"# Perf\n\nintro\n\n{bench.MARK_START}\nold\n{bench.MARK_END}\n\ntail\n")
    assert (
        bench.main(
            [
                "--small",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--options",
                "baseline",
                "fp8+swap",
                "flash",
                "keepattn",
                "nolora",
                "--keep-blocks",
                "3",
                "--out",
                str(out),
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert text.startswith("# Perf\n\nintro") and text.rstrip().endswith("tail") and "\nold\n" not in text
    rows = [
        line for line in text.splitlines() if line.startswith("| baseline") or line.startswith("| fp8+swap")
    ]
    assert len(rows) == 2 and all("| 5 | 32 |" in r and "| — |" in r for r in rows)
    assert all(r.split("|")[4].strip() != "—" for r in rows)  # a step time was measured
    assert "| keepattn |" in text and "keep_attention 3 |" in text  # 3 of the 4 small blocks
    nolora = next(line for line in text.splitlines() if line.startswith("| nolora"))
    assert nolora.split("|")[4].strip() != "—"  # the bare frozen base ran and was timed
    assert "'flash' runs only on CUDA" in text  # flash refused on CPU, reported in the table
    rendered = tmp_path / "rendered.md"
    assert bench.main(["--render", str(tmp_path / "r.json"), "--out", str(rendered)]) == 0
    section = text.split(bench.MARK_START)[1].split(bench.MARK_END)[0]
    assert rendered.read_text().split(bench.MARK_START)[1].split(bench.MARK_END)[0] == section


def test_unknown_bench_feature_is_refused():
    bench = _bench()
    with pytest.raises(ValueError, match="unknown bench feature"):
        bench.main(["--small", "--options", "fp8+swapp"])


def test_each_option_frees_its_model_before_the_next():
    """A block-swapped model must not survive into the next row (its memory would count there)."""
    import gc

    import torch

    bench = _bench()
    dims = dict(bench.SMALL)

    def blocks_alive() -> int:  # other tests' models may be alive too: compare counts
        return sum(type(o).__name__ == "WanTransformerBlock" for o in gc.get_objects())

    gc.collect()
    before = blocks_alive()
    gc.disable()  # only run_option's own collection may free it, as on a GPU where the next build follows
    try:
        for option in ("fp8+swap", "baseline"):
            bench.run_option(option, 5, (64, 64), dims, torch.device("cpu"), torch.float32, 1, 0, 2)
            assert blocks_alive() == before, option
    finally:
        gc.enable()


def test_the_peft_row_trains_adapters_in_the_base_dtype():
    """docs/performance.md says the PEFT row is not an fp32 adapter: its lora_A/B take the base's bf16."""
    import torch

    bench = _bench()
    model, params, _swapper = bench.prepare(
        "peft", dict(bench.SMALL), torch.device("cpu"), torch.bfloat16, 0, None
    )
    assert params and {p.dtype for p in params} == {torch.bfloat16}
    del model
