"""Post-hoc EMA of LoRA checkpoints against a direct implementation of each schedule."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from cadence.networks import LoraTensors, load_lora_file, save_lora_file
from cadence.tools.ema_merge import ema_merge, ema_merge_command, read_checkpoint, sigma_rel_to_gamma

NAMES = ("blocks.0.attn1.to_q", "blocks.1.ffn.net.2")


def _write(
    folder, step: int, expert: str | None = "high_noise", alpha: float = 2.0, name=None, meta_step=True
):
    g = torch.Generator().manual_seed(step)
    modules = {
        n: LoraTensors(torch.randn(4, 6, generator=g), torch.randn(6, 4, generator=g), alpha) for n in NAMES
    }
    suffix = f"_{expert}" if expert else ""
    path = folder / (name or f"run_{step:09d}{suffix}.safetensors")
    meta = {"step": str(step)} if meta_step else {}
    if expert:
        meta["expert"] = expert
    save_lora_file(path, modules, meta, "comfyui", torch.float32)
    return path, modules


def _direct(weights: list[dict[str, LoraTensors]], betas: list[float]) -> dict[str, dict[str, torch.Tensor]]:
    out = {n: {"down": weights[0][n].down.double(), "up": weights[0][n].up.double()} for n in NAMES}
    for b, w in zip(betas, weights[1:], strict=True):
        for n in NAMES:
            out[n]["down"] = b * out[n]["down"] + (1 - b) * w[n].down.double()
            out[n]["up"] = b * out[n]["up"] + (1 - b) * w[n].up.double()
    return out


def _assert_matches(merged, expected) -> None:
    for n in NAMES:
        torch.testing.assert_close(merged[n].down.double(), expected[n]["down"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(merged[n].up.double(), expected[n]["up"], atol=1e-6, rtol=1e-6)


@pytest.fixture
def series(tmp_path):
    """Four checkpoints at steps 100..400, written in shuffled order with shuffled mtimes."""
    made = {s: _write(tmp_path, s) for s in (300, 100, 400, 200)}
    for i, s in enumerate((400, 100, 300, 200)):  # mtimes disagree with the step order
        os.utime(made[s][0], (1_000_000 + i, 1_000_000 + i))
    return made


def test_constant_beta_orders_by_step_not_arguments(series) -> None:
    files = [series[s][0] for s in (300, 100, 400, 200)]
    merged, ckpts, betas = ema_merge([read_checkpoint(p) for p in files], beta=0.9)
    assert [c.step for c in ckpts] == [100, 200, 300, 400] and betas == [0.9, 0.9, 0.9]
    _assert_matches(merged, _direct([series[s][1] for s in (100, 200, 300, 400)], [0.9] * 3))


def test_default_beta_is_095(series) -> None:
    _, _, betas = ema_merge([read_checkpoint(series[s][0]) for s in series])
    assert betas == [0.95] * 3


def test_beta2_interpolates_linearly(series) -> None:
    merged, _, betas = ema_merge([read_checkpoint(series[s][0]) for s in series], beta=0.8, beta2=0.95)
    assert betas == pytest.approx([0.8, 0.875, 0.95])
    _assert_matches(merged, _direct([series[s][1] for s in (100, 200, 300, 400)], [0.8, 0.875, 0.95]))


def test_sigma_rel_equals_per_step_power_ema(series) -> None:
    sigma_rel = 0.15
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert sigma_rel**2 == pytest.approx((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))
    merged, _, _ = ema_merge([read_checkpoint(series[s][0]) for s in series], sigma_rel=sigma_rel)
    # direct: the EDM2 per-step update beta_t = (1 - 1/t)^(gamma+1) at every training step after the first
    # checkpoint, with the weights of the checkpoint that covers step t
    weights = {s: series[s][1] for s in series}
    out = {n: {"down": weights[100][n].down.double(), "up": weights[100][n].up.double()} for n in NAMES}
    for t in range(101, 401):
        owner = weights[((t - 1) // 100 + 1) * 100]
        b = (1 - 1 / t) ** (gamma + 1)
        for n in NAMES:
            out[n]["down"] = b * out[n]["down"] + (1 - b) * owner[n].down.double()
            out[n]["up"] = b * out[n]["up"] + (1 - b) * owner[n].up.double()
    _assert_matches(merged, out)


def test_step_from_name_when_metadata_lacks_it(tmp_path) -> None:
    a, _ = _write(tmp_path, 20, meta_step=False)
    b, _ = _write(tmp_path, 10, meta_step=False)
    _, ckpts, _ = ema_merge([read_checkpoint(a), read_checkpoint(b)])
    assert [c.step for c in ckpts] == [10, 20]


def test_no_step_anywhere_is_refused(tmp_path) -> None:
    path, _ = _write(tmp_path, 5, meta_step=False, name="final.safetensors")
    with pytest.raises(ValueError, match=r"final\.safetensors.*step"):
        read_checkpoint(path)


def test_mixing_experts_is_refused(tmp_path) -> None:
    high, _ = _write(tmp_path, 100, "high_noise")
    low, _ = _write(tmp_path, 200, "low_noise")
    with pytest.raises(ValueError, match=r"run_000000100_high_noise.*high_noise.*run_000000200_low_noise"):
        ema_merge([read_checkpoint(high), read_checkpoint(low)])


def test_expert_from_name_suffix(tmp_path) -> None:
    high, _ = _write(tmp_path, 100, None, name="run_000000100_high_noise.safetensors")
    low, _ = _write(tmp_path, 200, None, name="run_000000200_low_noise.safetensors")
    with pytest.raises(ValueError, match="refusing to mix experts"):
        ema_merge([read_checkpoint(high), read_checkpoint(low)])


def test_alpha_mismatch_names_both_files(tmp_path) -> None:
    a, _ = _write(tmp_path, 100, alpha=2.0)
    b, _ = _write(tmp_path, 200, alpha=4.0)
    with pytest.raises(ValueError, match=r"alpha differs.*2\.0 in run_000000100.*4\.0 in run_000000200"):
        ema_merge([read_checkpoint(a), read_checkpoint(b)])


def test_beta_and_sigma_rel_are_exclusive(series) -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        ema_merge([read_checkpoint(series[s][0]) for s in series], beta=0.9, sigma_rel=0.1)


def test_command_writes_output_with_metadata(series, tmp_path, capsys) -> None:
    out = tmp_path / "merged" / "ema.safetensors"
    args = argparse.Namespace(
        files=[str(series[s][0]) for s in (400, 300, 200, 100)],
        output=str(out),
        beta=0.9,
        beta2=None,
        sigma_rel=None,
    )
    assert ema_merge_command(args) == 0
    merged = load_lora_file(out)
    meta = merged.metadata
    assert json.loads(meta["ema_inputs"]) == [
        f"run_{s:09d}_high_noise.safetensors" for s in (100, 200, 300, 400)
    ]
    assert json.loads(meta["ema_steps"]) == [100, 200, 300, 400]
    assert meta["ema_schedule"] == "constant" and meta["ema_beta"] == "0.9"
    assert meta["expert"] == "high_noise" and meta["step"] == "400"
    assert all(t.alpha == 2.0 for t in merged.modules.values())
    _assert_matches(merged.modules, _direct([series[s][1] for s in (100, 200, 300, 400)], [0.9] * 3))
    assert "merged 4 checkpoints" in capsys.readouterr().out


def test_command_reports_errors(tmp_path, capsys) -> None:
    high, _ = _write(tmp_path, 100, "high_noise")
    low, _ = _write(tmp_path, 200, "low_noise")
    args = argparse.Namespace(
        files=[str(high), str(low)],
        output=str(tmp_path / "o.safetensors"),
        beta=None,
        beta2=None,
        sigma_rel=None,
    )
    assert ema_merge_command(args) == 2
    assert "refusing to mix experts" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
    second, _ = _write(tmp_path, 300, "high_noise")
    before = second.read_bytes()
    args.files, args.output = [str(high), str(second)], str(second)
    assert ema_merge_command(args) == 2
    assert "is one of the input files" in capsys.readouterr().err and second.read_bytes() == before


def test_different_ranks_are_named_as_rank_with_both_files(tmp_path, capsys) -> None:
    """Issue 21: ranks 4 and 8 with alpha = rank used to be reported as an alpha difference."""
    paths = []
    for step, rank in ((100, 4), (200, 8)):
        g = torch.Generator().manual_seed(step)
        modules = {
            n: LoraTensors(torch.randn(rank, 6, generator=g), torch.randn(6, rank, generator=g), float(rank))
            for n in NAMES
        }
        paths.append(tmp_path / f"run_{step:09d}.safetensors")
        save_lora_file(paths[-1], modules, {"step": str(step)}, "comfyui", torch.float32)
    args = argparse.Namespace(
        files=[str(p) for p in paths],
        output=str(tmp_path / "o.safetensors"),
        beta=None,
        beta2=None,
        sigma_rel=None,
    )
    assert ema_merge_command(args) == 2
    err = capsys.readouterr().err
    assert "rank differs" in err and "4 in run_000000100.safetensors" in err and "8 in run_000000200" in err
    assert "alpha" not in err


def test_lokr_and_dora_files_average_every_stored_tensor(tmp_path) -> None:
    """Factors (and DoRA magnitudes) are averaged tensor by tensor; type, rank and alpha are kept."""
    from cadence.networks.tensors import AdapterTensors

    files, weights = [], []
    for step in (100, 200, 300):
        g = torch.Generator().manual_seed(step)
        t = {
            "lokr_w1": torch.randn(2, 3, generator=g),
            "lokr_w2_a": torch.randn(4, 2, generator=g),
            "lokr_w2_b": torch.randn(2, 4, generator=g),
            "dora_scale": torch.rand(1, 12, generator=g) + 1,
        }
        weights.append(t)
        files.append(tmp_path / f"run_{step:09d}.safetensors")
        save_lora_file(
            files[-1],
            {NAMES[0]: AdapterTensors("lokr", t, 3.0)},
            {"step": str(step)},
            "comfyui",
            torch.float32,
        )
    out = tmp_path / "ema.safetensors"
    args = argparse.Namespace(
        files=[str(p) for p in files], output=str(out), beta=0.9, beta2=None, sigma_rel=None
    )
    assert ema_merge_command(args) == 0
    merged = load_lora_file(out).modules[NAMES[0]]
    assert merged.algo == "lokr" and merged.alpha == 3.0 and merged.rank == 2
    for key in weights[0]:
        direct = weights[0][key].double()
        for w in weights[1:]:
            direct = 0.9 * direct + 0.1 * w[key].double()
        torch.testing.assert_close(merged.tensors[key].double(), direct, atol=1e-6, rtol=1e-6)
    other = tmp_path / "run_000000400.safetensors"
    save_lora_file(
        other,
        {NAMES[0]: LoraTensors(torch.zeros(2, 12), torch.zeros(6, 2), 3.0)},
        {"step": "400"},
        "comfyui",
        torch.float32,
    )
    with pytest.raises(ValueError, match="adapter type differs"):
        ema_merge([read_checkpoint(files[0]), read_checkpoint(other)])


def test_beta2_with_two_files_is_refused_not_ignored() -> None:
    import pytest as _pytest

    from cadence.tools.ema_merge import ema_betas

    with _pytest.raises(ValueError, match="merge 3 or more checkpoints"):
        ema_betas([100, 200], beta=0.5, beta2=0.9)
    assert ema_betas([100, 200, 300], beta=0.5, beta2=0.9) == [0.5, 0.9]
