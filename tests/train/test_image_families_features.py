"""LyCORIS types on the image families, the ComfyUI/kohya file layouts' limits refused at their key, and
`cadence analyze` on a single-expert run."""

from __future__ import annotations

from pathlib import Path

import diffusers
import pytest
import torch
import yaml

from cadence.config.errors import ConfigError
from cadence.config.loader import load_config
from cadence.networks.formats import load_lora_file
from cadence.tools.analyze import analyze_run
from cadence.train.runner import run_training
from cadence.train.setup import build_training

FUSED = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "proj_mlp"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from cadence.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("imgs"), n_videos=0, n_images=2, width=32, height=32
    )


def _job(tmp: Path, model: Path, arch: str, images: Path, network: dict, steps: int = 3) -> Path:
    job = {
        "name": "job",
        "training_folder": str(tmp / "out"),
        "device": "cpu",
        "trigger_word": "sks",
        "network": network,
        "save": {"save_every": steps, "dtype": "float32"},
        "datasets": [{"folder_path": str(images), "resolution": [32]}],
        "train": {"steps": steps, "lr": 1e-3, "dtype": "fp32", "disable_sampling": True, "seed": 1},
        "model": {"name_or_path": str(model), "arch": arch},
        "logging": {"tensorboard": False},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def test_lokr_on_fluxs_fused_qkv_is_refused_at_save_format_before_caching(tiny_models, images, tmp_path):
    path = _job(
        tmp_path, tiny_models("flux"), "flux", images, {"type": "lokr", "linear": 4, "linear_alpha": 4}
    )
    with pytest.raises(ConfigError) as err:
        build_training(load_config(path))
    message = dict(err.value.issues)["save.format"]
    assert "double_blocks.0.img_attn.qkv" in message and "train type lora" in message
    assert not (tmp_path / "out" / "job" / "latent_cache").exists()  # refused before any caching


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "network", "pipeline"),
    [
        ("zimage", {"type": "lokr", "linear": 4, "linear_alpha": 2, "lokr_factor": 4}, "ZImagePipeline"),
        (
            "flux",
            {"type": "loha", "linear": 4, "linear_alpha": 2, "network_kwargs": {"ignore_if_contains": FUSED}},
            None,
        ),
    ],
)
def test_lycoris_types_train_on_image_families_and_their_files_read_back(
    arch, network, pipeline, tiny_models, images, tmp_path
):
    model = tiny_models(arch)
    assert run_training(_job(tmp_path, model, arch, images, network)) == 0
    run = tmp_path / "out" / "job"
    lora = load_lora_file(run / "job_000000003.safetensors")
    assert lora.layout == "comfyui" and lora.algos == [network["type"]]
    assert not any(
        part in name
        for name in lora.modules
        for part in network.get("network_kwargs", {}).get("ignore_if_contains", ["-"])
    )
    if pipeline is not None:  # diffusers reads Z-Image's LoKr files (its own converter): the exact delta
        pipe = getattr(diffusers, pipeline).from_pretrained(str(model))
        before = {
            n: m.weight.detach().clone() for n, m in pipe.transformer.named_modules() if n in lora.modules
        }
        pipe.load_lora_weights(str(run / "job_000000003.safetensors"))
        pipe.fuse_lora(lora_scale=1.0)
        modules = dict(pipe.transformer.named_modules())
        for name, t in lora.modules.items():
            delta = modules[name].weight.detach() - before[name]
            torch.testing.assert_close(delta, t.diff_weight().to(delta), rtol=1e-4, atol=1e-6)
    report = analyze_run(run, preset="motion")  # what `cadence analyze RUN --preset motion` prints
    assert any(
        "weight_ratio_low" in n and "do not apply: this run trains main only" in n for n in report.notes
    )
    assert report.recommendations and report.series.points[-1].experts["main"].magnitude > 0


def test_flux_shift_draws_each_batch_from_the_models_shift_at_its_latent_size(tiny_models, images, tmp_path):
    """ai-toolkit's flux_shift: the timesteps of a step are `shift` at exp(mu) of the scheduler's calculate_shift
    for the batch's latents (here 4x4 latents: 4 tokens of 2x2 patches), not at train.flow_shift."""
    from cadence.schedule.timesteps import TimestepSampler
    from cadence.train.loop import StopFlag, Trainer

    path = _job(
        tmp_path, tiny_models("flux"), "flux", images, {"type": "lora", "linear": 4, "linear_alpha": 4}
    )
    job = yaml.safe_load(path.read_text())
    job["train"].update(timestep_type="flux_shift", batch_size=2, min_denoising_steps=100)
    path.write_text(yaml.safe_dump(job))
    setup = build_training(load_config(path))
    trainer = Trainer(setup, StopFlag(), prefetch=False)
    streams = setup.randomness.of("main")
    before = torch.Generator().set_state(streams.timesteps.get_state())
    loss, t = trainer._micro_batch_loss("main")
    shift = setup.adapter.timestep_shift(torch.Size([2, 16, 4, 4]))
    assert 1.2 < shift < 2.0  # exp(0.5 - 252 * 0.65 / 3840): far from flow_shift's 3.0
    cut = TimestepSampler("shift", shift).icdf(
        torch.tensor(0.9, dtype=torch.float64)
    )  # min_denoising_steps 100
    drawn = TimestepSampler("shift", shift, t_range=(0.0, float(cut))).sample(2, 0.0, 1.0, before)
    assert torch.equal(t, drawn) and bool(torch.isfinite(loss))
    assert float(t.max()) < float(cut)


def test_flux_shift_is_refused_where_the_scheduler_has_no_shift_per_size(tiny_models, images, tmp_path):
    path = _job(
        tmp_path, tiny_models("wan21"), "wan21", images, {"type": "lora", "linear": 4, "linear_alpha": 4}
    )
    job = yaml.safe_load(path.read_text())
    job["train"]["timestep_type"] = "flux_shift"
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "use timestep_type: shift" in dict(err.value.issues)["train.timestep_type"]
    job["model"] = {"name_or_path": str(tiny_models("flux")), "arch": "flux"}
    job["train"]["flow_shift"] = 2.0  # flux_shift takes the model's shift: flow_shift would do nothing
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "applies only with timestep_type: shift" in dict(err.value.issues)["train.flow_shift"]
