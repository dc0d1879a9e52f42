"""The datasets' augmentation and regularisation keys in real training runs of the tiny Wan 2.2 I2V model:
what each does to the batches, the loss and the gradients, and that a resumed run with all of their random
draws is bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cadence.config.loader import load_config_dict
from cadence.data.synthetic import render_frame
from cadence.networks.lora import LoRANetwork
from cadence.train.loop import Trainer
from cadence.train.runner import run_training
from cadence.train.setup import build_training

from .conftest import job_dict, write_job

VOLATILE = {"timestamp", "step_time_s", "data_time_s", "samples_per_s", "peak_memory_gb"}


@pytest.fixture(scope="module")
def reg_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reg") / "people"
    folder.mkdir()
    for n in range(2):
        Image.fromarray(render_frame(3 * n, 48, 32, seed=40 + n)).save(folder / f"person_{n}.png")
        (folder / f"person_{n}.txt").write_text(f"a person, standing, [trigger] jacket {n}", encoding="utf-8")
    return folder


def _job(model: Path, clips: Path, out: Path, reg: Path | None = None, **train: Any) -> dict[str, Any]:
    job = job_dict(model, clips, out, **train)
    if reg is not None:
        job["datasets"].append(
            {"folder_path": str(reg), "resolution": [32], "is_reg": True, "loss_multiplier": 0.5}
        )
        job["train"].setdefault("reg_weight", 0.5)
    return job


def _rows(run: Path) -> list[dict]:
    lines = (run / "metrics_job.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


@pytest.mark.slow
def test_resume_with_every_random_draw_of_these_keys_is_bit_identical(tiny_i2v, clips, reg_images, tmp_path):
    """shuffle_tokens, token_dropout_rate, temporal_jitter's plan choice and the regularisation sampler all
    draw; flips, loss weights and network weights ride along. Stopped inside an expert block."""

    def job(out: Path, steps: int) -> dict[str, Any]:
        data = _job(tiny_i2v, clips, out, reg_images, steps=steps, switch_boundary_every=3, batch_size=2)
        data["datasets"][0].update(
            shuffle_tokens=True,
            token_dropout_rate=0.3,
            keep_tokens=1,
            temporal_jitter=1,
            temporal_jitter_variants=2,
            flip_x=True,
            network_weight=0.5,
        )
        data["datasets"][1]["network_weight"] = 2.0  # regularisation batches train at another multiplier
        return data

    assert run_training(write_job(tmp_path / "a.yaml", job(tmp_path / "a", 10))) == 0
    assert run_training(write_job(tmp_path / "b.yaml", job(tmp_path / "b", 5))) == 0
    assert run_training(write_job(tmp_path / "b.yaml", job(tmp_path / "b", 10))) == 0
    run_a, run_b = tmp_path / "a" / "job", tmp_path / "b" / "job"
    assert _rows(run_a) == _rows(run_b) and len(_rows(run_a)) == 10
    for expert in ("high_noise", "low_noise"):
        a = load_file(run_a / f"job_{10:09d}_{expert}.safetensors")
        b = load_file(run_b / f"job_{10:09d}_{expert}.safetensors")
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), expert


@pytest.mark.slow
def test_regularisation_batches_alternate_per_expert_without_the_trigger_word(
    tiny_i2v, clips, reg_images, tmp_path
):
    job = _job(tiny_i2v, clips, tmp_path / "run", reg_images, steps=8, switch_boundary_every=1)
    setup = build_training(load_config_dict(job, tmp_path / "job.yaml"))
    items = setup.batches.items
    seen: list[tuple[str, list[bool], list[str], Any]] = []
    assemble = setup.batches.assemble

    def recording(indices: list[int], rng):  # observes the real assembler's batches
        batch = assemble(indices, rng)
        seen.append(
            (setup.router.current(), [items[i].is_reg for i in indices], batch.captions, batch.loss_weights)
        )
        return batch

    setup.batches.assemble = recording
    assert Trainer(setup).run() == 0
    assert len(seen) == 8
    for expert in ("high_noise", "low_noise"):
        own = [(reg, captions, weights) for e, reg, captions, weights in seen if e == expert]
        assert [reg[0] for reg, _, _ in own] == [False, True, False, True]  # its 2nd and 4th steps
        for reg, captions, weights in own:
            if reg[0]:
                assert weights is not None and weights.tolist() == [0.25]  # loss_multiplier x reg_weight
                assert all(c == "" or ("a person" in c and "sks" in c.split(", ")[-1]) for c in captions)
            else:
                assert weights is None and all(c == "" or "sks" in c for c in captions)
    reg_captions = {it.caption for it in items if it.is_reg}
    assert reg_captions == {
        "a person, standing, sks jacket 0",
        "a person, standing, sks jacket 1",
    }  # none prepended


@pytest.mark.slow
def test_loss_multiplier_scales_the_loss_and_network_weight_the_lora_gradient(tiny_i2v, clips, tmp_path):
    def first_row(name: str, **dataset: Any) -> dict:
        job = job_dict(tiny_i2v, clips, tmp_path / name, steps=1)
        job["datasets"][0].update(dataset)
        assert run_training(write_job(tmp_path / f"{name}.yaml", job)) == 0
        return _rows(tmp_path / name / "job")[0]

    plain = first_row("plain")
    weighted = first_row("weighted", loss_multiplier=2.0)
    strong = first_row("strong", network_weight=2.0)
    assert weighted["loss"] == 2 * plain["loss"]  # the same noise, timesteps and batch: exactly twice
    # LoRA's up matrices start at zero: the first prediction is the base model's, and the gradient of the up
    # matrices is proportional to the multiplier the training forward used
    assert strong["loss"] == plain["loss"]
    assert strong["grad_norm"] == pytest.approx(2 * plain["grad_norm"], rel=1e-6)


def test_a_per_sample_multiplier_scales_each_sample_like_its_own_scalar() -> None:
    linear = torch.nn.Sequential(torch.nn.Linear(8, 6))
    from cadence.config.schema import NetworkConfig

    net = LoRANetwork(linear, NetworkConfig(linear=2, linear_alpha=2), name="main", seed=1, only=["0"])
    net.apply()
    for module in net.modules_by_name.values():
        torch.nn.init.normal_(module.up, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(3))
    rows = []
    for m in (1.0, 0.5, -2.0):
        net.multiplier = m
        rows.append(linear(x))
    net.multiplier = torch.tensor([1.0, 0.5, -2.0])
    mixed = linear(x)
    for n in range(3):
        assert torch.allclose(mixed[n], rows[n][n], atol=1e-6)
    net.multiplier = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="per-sample multipliers"):
        linear(x)


def test_with_unload_text_encoder_regularisation_items_train_on_the_blank_prompt(clips, reg_images, tmp_path):
    """ai-toolkit conditions regularisation batches on its cached blank prompt, the others on the trigger."""
    from cadence.data.dataset import build_dataset_index
    from cadence.train.fixed_prompt import fixed_prompt, use_fixed_prompt

    job = _job(Path("/unused"), clips, tmp_path / "run", reg_images, unload_text_encoder=True)
    cfg = load_config_dict(job, tmp_path / "job.yaml")
    index = build_dataset_index(cfg, 16, 4, 16)
    use_fixed_prompt(index, fixed_prompt(cfg))
    assert {(it.is_reg, it.caption) for it in index.train_items} == {(False, "sks"), (True, "")}
