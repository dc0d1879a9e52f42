"""A checkpoint saved at the step a phase ends, or while an expert waits for its turn, carries the alpha its
weights were trained with: the new alpha reaches an adapter at that expert's next training step."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.train.conftest import job_dict, write_job

from cadence.metrics.jsonl import read_metrics
from cadence.networks.formats import load_lora_file
from cadence.networks.lora import LoRANetwork
from cadence.train.runner import run_training

OPEN = {"loss_improvement_rate_below": None, "min_gradient_stability": None, "min_loss_r2": None}
PHASES = {
    "foundation": {"alpha": 2, "min_steps": 2, "exit_criteria": {**OPEN, "advisory": ["max_loss_cv"]}},
    "balance": {"alpha": 6, "min_steps": 2, "exit_criteria": {**OPEN, "advisory": ["max_loss_cv"]}},
    "emphasis": {"alpha": 12, "min_steps": 0},
}


@pytest.mark.slow
def test_saved_alpha_is_the_trained_alpha(tiny_i2v: Path, clips: Path, tmp_path: Path, monkeypatch) -> None:
    used: dict[str, list[float]] = {"high_noise": [], "low_noise": []}
    delta = LoRANetwork._delta

    def recording(self, lora, x):
        if self.training and (not used[self.name] or used[self.name][-1] != lora.alpha):
            used[self.name].append(lora.alpha)  # alphas the training forward used, in order
        return delta(self, lora, x)

    monkeypatch.setattr(LoRANetwork, "_delta", recording)
    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=8, switch_boundary_every=2)
    job["network"]["alpha_schedule"] = {"enabled": True, "window": 20, "alpha_phases": PHASES}
    job["save"]["save_every"] = 2
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0

    run = tmp_path / "out" / "job"
    rows = read_metrics(run / "metrics_job.jsonl")
    assert [r["expert"] for r in rows] == ["high_noise"] * 2 + ["low_noise"] * 2 + ["high_noise"] * 2 + [
        "low_noise"
    ] * 2
    # each expert leaves foundation after its 2nd step and balance after its 4th; the new alpha is used from
    # its next training step on
    assert used == {"high_noise": [2.0, 6.0], "low_noise": [2.0, 6.0]}
    assert [r["linear_alpha"] for r in rows] == [2.0] * 4 + [6.0] * 4
    assert (rows[1]["phase"], rows[1]["steps_in_phase"]) == ("foundation", 2)  # the step that ended it
    assert (rows[2]["phase_high_noise"], rows[2]["linear_alpha_high_noise"]) == ("balance", 2.0)  # pending
    expected = {2: (2.0, 2.0), 4: (2.0, 2.0), 6: (6.0, 2.0), 8: (6.0, 6.0)}  # (high, low) trained alphas
    for step, alphas in expected.items():
        for expert, alpha in zip(("high_noise", "low_noise"), alphas, strict=True):
            lora = load_lora_file(run / f"job_{step:09d}_{expert}.safetensors")
            assert {t.alpha for t in lora.modules.values()} == {alpha}, (step, expert)
        assert rows[step - 1]["linear_alpha_high_noise"] == alphas[0]
        assert rows[step - 1]["linear_alpha_low_noise"] == alphas[1]
