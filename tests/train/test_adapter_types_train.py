"""Every adapter type trains the tiny Wan 2.2 I2V model per expert: the fixed-timestep eval loss falls, and
N steps equal N/2 steps + resume, bit for bit (files, metrics), with each expert's own file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cadence.config.loader import load_config_dict
from cadence.metrics.jsonl import read_metrics
from cadence.networks import load_lora_file
from cadence.train.eval import FixedEval
from cadence.train.loop import Trainer
from cadence.train.runner import run_training
from cadence.train.setup import build_training

from .conftest import job_dict, write_job

VOLATILE = {"timestamp", "step_time_s", "data_time_s", "samples_per_s", "peak_memory_gb"}
NETWORKS = {
    "lokr": {"type": "lokr", "lokr_full_rank": False, "linear": 4, "linear_alpha": 2, "lokr_factor": 2},
    "loha": {"type": "loha", "linear": 4, "linear_alpha": 2, "network_kwargs": {"rank_dropout": 0.2}},
    "locon": {
        "type": "locon",
        "linear": 4,
        "linear_alpha": 2,
        "network_kwargs": {"include_patterns": ["patch_embedding"]},
    },
    "dora": {"type": "dora", "linear": 4, "linear_alpha": 2, "network_kwargs": {"module_dropout": 0.1}},
}
# Stated margin: after 40 steps the fixed-timestep eval loss is at most 90% of step 0's (test_learns.py asks
# 85% of plain LoRA after 200 steps; measured here 0.79-0.86). LoKr gets a 3x larger lr, as LyCORIS's
# guidelines advise for its far fewer parameters.
REQUIRED_RATIO = 0.9
LR = {"lokr": 3e-2}


def _evaluate(setup, evaluator: FixedEval) -> dict[str, float]:
    """The eval as the trainer runs it: adapters in eval mode (no dropout), torch's global RNG untouched."""
    state = torch.random.get_rng_state()
    for net in setup.networks.values():
        net.eval()
    try:
        return evaluator.evaluate(setup.adapter, setup.device, setup.dtype)
    finally:
        for net in setup.networks.values():
            net.train()
        torch.random.set_rng_state(state)


def _job(model: Path, data: Path, out: Path, kind: str, **train) -> dict:
    job = job_dict(model, data, out, **train)
    job["network"] = dict(NETWORKS[kind])
    return job


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_type_learns_per_expert_and_resumes_bit_for_bit(
    kind: str, tiny_i2v: Path, clips: Path, tmp_path: Path
):
    steps, train = 40, {"lr": LR.get(kind, 1e-2), "switch_boundary_every": 5}

    def job(out: str, n: int) -> dict:
        spec = _job(tiny_i2v, clips, tmp_path / out, kind, steps=n, **train)
        spec["datasets"][0]["caption_dropout_rate"] = 0.0
        return spec

    # straight run, with the fixed-timestep eval before and after (run as the trainer does: see _evaluate)
    setup = build_training(load_config_dict(job("a", steps), tmp_path / "a.yaml"))
    assert {a for n in setup.networks.values() for a in n.algos} == {setup.cfg.network.algo}
    evaluator = FixedEval(
        list(range(len(setup.index.train_items))), setup.batches, setup.adapter.experts, setup.timesteps
    )
    before = _evaluate(setup, evaluator)
    assert Trainer(setup).run() == 0
    after = _evaluate(setup, evaluator)
    setup.close()
    for key in ("eval_loss_high_noise", "eval_loss_low_noise"):
        assert after[key] < REQUIRED_RATIO * before[key], (key, before[key], after[key])
    # the same run stopped halfway and resumed
    assert run_training(write_job(tmp_path / "b.yaml", job("b", steps // 2))) == 0
    assert run_training(write_job(tmp_path / "b.yaml", job("b", steps))) == 0
    run_a, run_b = tmp_path / "a" / "job", tmp_path / "b" / "job"

    def rows(run: Path) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k not in VOLATILE} for r in read_metrics(run / "metrics_job.jsonl")
        ]

    assert rows(run_a) == rows(run_b) and len(rows(run_b)) == steps
    for expert in ("high_noise", "low_noise"):
        name = f"job_{steps:09d}_{expert}.safetensors"
        a, b = load_file(run_a / name), load_file(run_b / name)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), f"{kind} {expert} differs"
        lora = load_lora_file(run_a / name)
        assert lora.metadata["expert"] == expert and lora.algos == [setup.cfg.network.algo]
