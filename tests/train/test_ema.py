"""In-training EMA (`train.ema_config`): per expert at its own steps, in the training state, used for the
saved files (as ai-toolkit does), exact across a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cadence.config import ConfigError, load_config_dict
from cadence.train.ema import AdapterEMA
from cadence.train.runner import run_training

from .conftest import job_dict, write_job


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_update_is_the_ai_toolkit_formula_and_only_for_the_stepping_expert() -> None:
    nets = {"high_noise": _net(0), "low_noise": _net(1)}
    ema = AdapterEMA(nets, decay=0.9)
    start = {e: [p.detach().clone() for p in n.parameters()] for e, n in nets.items()}
    with torch.no_grad():
        for p in nets["high_noise"].parameters():
            p.add_(1.0)
        for p in nets["low_noise"].parameters():
            p.add_(5.0)  # trained by nobody this step: its EMA must not move
    ema.update("high_noise")
    for shadow, before, now in zip(
        ema.shadow["high_noise"], start["high_noise"], nets["high_noise"].parameters(), strict=True
    ):
        assert torch.allclose(shadow, 0.9 * before + 0.1 * now.detach(), atol=1e-7)
    for shadow, before in zip(ema.shadow["low_noise"], start["low_noise"], strict=True):
        assert torch.equal(shadow, before)
    assert ema.updates == {"high_noise": 1, "low_noise": 0}


def test_swap_shows_the_average_and_restores_the_trained_weights_bit_for_bit() -> None:
    nets = {"main": _net(2)}
    ema = AdapterEMA(nets, decay=0.5)
    with torch.no_grad():
        for p in nets["main"].parameters():
            p.mul_(1.0 / 3.0)  # values whose round trip through another dtype would show
    trained = [p.detach().clone() for p in nets["main"].parameters()]
    ema.update("main")
    with ema.swapped_in():
        assert all(
            torch.equal(p, s) for p, s in zip(nets["main"].parameters(), ema.shadow["main"], strict=True)
        )
    assert all(torch.equal(p, t) for p, t in zip(nets["main"].parameters(), trained, strict=True))


def test_config_keys(make_flat_train) -> None:
    cfg = load_config_dict(make_flat_train(ema_config={"use_ema": True, "ema_decay": 0.99}))
    assert cfg.train.ema_config.use_ema and cfg.train.ema_config.ema_decay == 0.99
    for bad, words in (
        ({"use_ema": True, "use_feedback": True}, "use_feedback"),
        ({"use_ema": True, "param_multiplier": 0.999}, "weight_decay"),
        ({"use_ema": True, "ema_decay": 1.0}, "< 1"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config_dict(make_flat_train(ema_config=bad))
        assert words in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config_dict(make_flat_train(ema_config={"use_ema": True}, optimizer="adamw_schedulefree"))
    assert "average twice" in str(err.value)


@pytest.fixture
def make_flat_train(tmp_path):
    def make(**train):
        return {
            "name": "j",
            "model": {"name_or_path": str(tmp_path), "arch": "wan21"},
            "train": {"disable_sampling": True, **train},
        }

    return make


def _expert_state(state_file: Path) -> dict:
    return torch.load(state_file, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_saved_files_hold_the_ema_and_resume_continues_it_exactly(
    tiny_i2v: Path, clips: Path, tmp_path: Path
) -> None:
    def job(folder: str, steps: int) -> Path:
        config = job_dict(tiny_i2v, clips, tmp_path / folder, steps=steps, switch_boundary_every=2, lr=1e-2)
        config["train"]["ema_config"] = {"use_ema": True, "ema_decay": 0.8}
        config["save"]["save_every"] = 3
        return write_job(tmp_path / f"{folder}.yaml", config)

    assert run_training(job("a", 6)) == 0
    assert run_training(job("b", 3)) == 0
    assert run_training(job("b", 6)) == 0  # resumed at step 3, inside the high-noise expert's second turn
    run_a, run_b = tmp_path / "a" / "job", tmp_path / "b" / "job"
    state = _expert_state(run_a / "training_state" / "step_000000006" / "state.pt")
    assert state["ema"]["updates"] == {"high_noise": 4, "low_noise": 2}  # own steps: 1,2,5,6 and 3,4
    raw = load_file(run_a / "training_state" / "step_000000006" / "adapters.safetensors")
    for expert in ("high_noise", "low_noise"):
        a = load_file(run_a / f"job_000000006_{expert}.safetensors")
        b = load_file(run_b / f"job_000000006_{expert}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        ups = [k for k in a if k.endswith("lora_up.weight")]
        trained_ups = [v for k, v in raw.items() if k.startswith(f"{expert}::") and k.endswith("up")]
        assert ups and trained_ups
        assert sum(float(a[k].abs().sum()) for k in ups) < sum(float(v.abs().sum()) for v in trained_ups), (
            "the file holds the average, which lags the trained up-projections (they start at zero)"
        )
    state_b = _expert_state(run_b / "training_state" / "step_000000006" / "state.pt")
    for expert, tensors in state["ema"]["shadow"].items():
        assert all(torch.equal(x, y) for x, y in zip(tensors, state_b["ema"]["shadow"][expert], strict=True))
    from safetensors import safe_open

    with safe_open(str(run_a / "job_000000006_low_noise.safetensors"), "pt") as handle:
        assert handle.metadata()["weights"] == "ema"
