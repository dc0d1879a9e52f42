"""Loading: arch detection, bad folders, hub ids offline, boundaries, expert ranges, frozen base."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cadence.config.schema import ModelConfig, ModelKwargs
from cadence.models import ArchMismatchError, ModelLoadError, detect_arch, load_model_adapter
from cadence.models.base import ExpertSpec, experts_for
from cadence.models.registry import arch_geometry
from cadence.models.tiny import ARCHS

CPU = torch.device("cpu")


def _load(folder, arch, **kw):
    return load_model_adapter(ModelConfig(name_or_path=str(folder), arch=arch, **kw), CPU, torch.float32)


@pytest.mark.parametrize("arch", ARCHS)
def test_detect_arch_and_attributes(tiny_dirs, arch):
    folder = tiny_dirs(arch)
    assert detect_arch(folder) == arch
    adapter = _load(folder, arch)
    assert adapter.arch == arch
    assert adapter.spatial_multiple == (32 if arch == "wan22_5b" else 16)
    assert adapter.native_fps == (24 if arch == "wan22_5b" else 16)
    assert adapter.temporal_multiple == 4
    assert adapter.is_i2v == (arch in ("wan21_i2v", "wan22_14b_i2v", "wan22_5b"))
    assert adapter.model_id.startswith(f"{folder}#")  # + a digest of the encoders' files (cache keys)
    for spec in adapter.experts:
        module = adapter.transformer(spec.name)
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert not any(p.requires_grad for p in adapter.components["text_encoder"].parameters())
    assert not any(p.requires_grad for p in adapter.components["vae"].parameters())


def test_expert_ranges_and_order(tiny_dirs):
    adapter = _load(tiny_dirs("wan22_14b_i2v"), "wan22_14b_i2v")
    assert adapter.experts == (
        ExpertSpec("high_noise", "transformer", 0.9, 1.0),
        ExpertSpec("low_noise", "transformer_2", 0.0, 0.9),
    )
    assert adapter.expert_for_t(0.9).name == "high_noise"
    assert adapter.expert_for_t(1.0).name == "high_noise"
    assert adapter.expert_for_t(0.8999).name == "low_noise"
    assert adapter.expert_for_t(0.0).name == "low_noise"
    assert adapter.transformer("high_noise") is adapter.components["transformer"]
    assert adapter.transformer("low_noise") is adapter.components["transformer_2"]
    with pytest.raises(KeyError, match="main"):
        adapter.transformer("main")
    single = _load(tiny_dirs("wan21"), "wan21")
    assert single.experts == (ExpertSpec("main", "transformer", 0.0, 1.0),)
    assert single.boundary is None
    with pytest.raises(ModelLoadError):
        experts_for(True, None)


def test_boundary_folder_default_and_override(tiny_dirs, tmp_path):
    assert _load(tiny_dirs("wan22_14b"), "wan22_14b").boundary == 0.875
    over = _load(tiny_dirs("wan22_14b_i2v"), "wan22_14b_i2v", model_kwargs=ModelKwargs(boundary_ratio=0.8))
    assert over.boundary == 0.8
    assert over.experts[0].t_low == 0.8 and over.experts[1].t_high == 0.8
    # folder value wins over the published default; with no folder value the default (0.9 for I2V) applies
    folder = shutil.copytree(tiny_dirs("wan22_14b_i2v"), tmp_path / "m")
    index = json.loads((folder / "model_index.json").read_text())
    index["boundary_ratio"] = 0.7
    (folder / "model_index.json").write_text(json.dumps(index))
    assert _load(folder, "wan22_14b_i2v").boundary == 0.7
    index["boundary_ratio"] = None
    (folder / "model_index.json").write_text(json.dumps(index))
    assert _load(folder, "wan22_14b_i2v").boundary == 0.9


def test_trained_experts_from_config(tiny_dirs):
    adapter = _load(
        tiny_dirs("wan22_14b_i2v"), "wan22_14b_i2v", model_kwargs=ModelKwargs(train_low_noise=False)
    )
    assert adapter.trained_experts == ("high_noise",)
    with pytest.raises(ModelLoadError, match="nothing to train"):
        _load(
            tiny_dirs("wan22_14b_i2v"),
            "wan22_14b_i2v",
            model_kwargs=ModelKwargs(train_low_noise=False, train_high_noise=False),
        )


def test_arch_mismatch_is_reported_before_loading_weights(tiny_dirs, tmp_path):
    folder = shutil.copytree(tiny_dirs("wan22_14b_i2v"), tmp_path / "m")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()  # would fail a load
    with pytest.raises(ArchMismatchError) as err:
        _load(folder, "wan21")
    msg = str(err.value)
    assert "model.arch is 'wan21'" in msg and "'wan22_14b_i2v'" in msg and str(folder) in msg


def test_missing_component_names_the_path(tiny_dirs, tmp_path):
    folder = shutil.copytree(tiny_dirs("wan22_14b_i2v"), tmp_path / "m")
    weights = folder / "transformer_2" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelLoadError) as err:
        _load(folder, "wan22_14b_i2v")
    msg = str(err.value)
    assert str(folder / "transformer_2") in msg and str(folder / "vae") in msg
    assert "complete Diffusers Wan folder" in msg


def test_missing_shard_of_sharded_weights(tiny_dirs, tmp_path):
    folder = shutil.copytree(tiny_dirs("wan21"), tmp_path / "m")
    sub = folder / "transformer"
    (sub / "diffusion_pytorch_model.safetensors").rename(sub / "part-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "part-00001.safetensors", "b": "part-00002.safetensors"}}
    (sub / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="part-00002.safetensors"):
        _load(folder, "wan21")


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        _load(tmp_path, "wan21")
    with pytest.raises(ModelLoadError, match="does not exist"):
        _load(tmp_path / "nope" / "model", "wan21")


def test_hub_id_offline_names_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        _load("cadence-tests/no-such-wan-model", "wan22_14b_i2v", revision="abc123")
    msg = str(err.value)
    assert "cadence-tests/no-such-wan-model" in msg and "abc123" in msg
    assert "HF_HUB_OFFLINE" in msg and "hf download" in msg


def test_build_pipeline_reuses_modules_and_samples(tiny_dirs):
    adapter = _load(tiny_dirs("wan22_14b_i2v"), "wan22_14b_i2v")
    pipe = adapter.build_pipeline()
    assert isinstance(pipe, adapter.pipeline_class)
    assert pipe.transformer is adapter.transformer("high_noise")
    assert pipe.transformer_2 is adapter.transformer("low_noise")
    assert pipe.config.boundary_ratio == 0.9
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        image=Image.fromarray(np.zeros((32, 32, 3), np.uint8)),
        prompt="a dog runs",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="np",
    ).frames
    assert out.shape == (1, 5, 32, 32, 3)


def test_encode_video_normalizes_like_the_pipeline(tiny_dirs):
    adapter = _load(tiny_dirs("wan22_14b"), "wan22_14b")
    pixels = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = adapter.encode_video(pixels)
    vae = adapter.components["vae"]
    with torch.no_grad():
        raw = vae.encode(pixels).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(
        latents * std + mean, raw, atol=1e-5, rtol=1e-5
    )  # the pipeline's decode inverse
    assert torch.equal(adapter.encode_video(pixels), latents)  # mode: deterministic, cacheable
    with pytest.raises(ValueError, match="multiple of 16"):
        adapter.encode_video(torch.zeros(1, 3, 5, 40, 32))


def test_low_vram_keeps_experts_on_cpu_and_moves_on_request(tiny_dirs):
    adapter = _load(tiny_dirs("wan22_14b"), "wan22_14b", low_vram=True)
    assert adapter.low_vram
    adapter.onload("high_noise")
    adapter.offload("low_noise")
    assert next(adapter.transformer("low_noise").parameters()).device.type == "cpu"


def test_t2v_has_no_condition_and_i2v_requires_it(tiny_dirs):
    t2v = _load(tiny_dirs("wan21"), "wan21")
    assert t2v.encode_condition(torch.zeros(1, 3, 32, 32), 5) == {}
    i2v = _load(tiny_dirs("wan22_14b_i2v"), "wan22_14b_i2v")
    text = i2v.pad_text(i2v.encode_prompts(["x"]))
    with pytest.raises(ValueError, match="condition"):
        i2v.predict("low_noise", torch.zeros(1, 16, 2, 4, 4), torch.tensor([0.3]), text, {})


@pytest.mark.parametrize("arch", ARCHS)
def test_arch_geometry_matches_loaded_adapter(tiny_dirs, arch):
    adapter = _load(tiny_dirs(arch), arch)
    expected = (adapter.spatial_multiple, adapter.temporal_multiple, adapter.native_fps)
    assert arch_geometry(arch) == expected


def test_gradient_checkpointing_and_text_encoder_unload(tiny_dirs):
    adapter = _load(tiny_dirs("wan22_14b"), "wan22_14b")
    adapter.enable_gradient_checkpointing("low_noise")
    assert adapter.transformer("low_noise").gradient_checkpointing
    assert not adapter.transformer("high_noise").gradient_checkpointing
    adapter.unload_text_encoder()
    with pytest.raises(RuntimeError, match="unloaded"):
        adapter.encode_prompts(["a cat"])


def test_ti2v_5b_batch_of_two_keeps_first_frame_clean(tiny_dirs):
    adapter = _load(tiny_dirs("wan22_5b"), "wan22_5b")
    frames = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond = adapter.encode_condition(frames, 5)
    assert cond["first_frame_latent"].shape == (2, 48, 1, 4, 4)
    assert cond["first_frame_mask"].shape == (2, 1, 2, 4, 4)
    text = adapter.pad_text(adapter.encode_prompts(["a", "b"]))
    noisy = torch.randn(2, 48, 2, 4, 4)
    hidden, timestep = adapter._expand_inputs(noisy, torch.tensor([500.0, 250.0]), cond)
    assert torch.equal(hidden[:, :, 0:1], cond["first_frame_latent"])
    assert torch.equal(hidden[:, :, 1:], noisy[:, :, 1:])
    assert timestep.shape == (2, 8) and timestep[:, :4].abs().sum() == 0
    assert timestep[0, 4:].eq(500).all() and timestep[1, 4:].eq(250).all()
    out = adapter.predict("main", noisy, torch.tensor([0.5, 0.25]), text, cond)
    assert out.shape == noisy.shape


def test_hub_id_offline_loads_from_the_hf_cache(tiny_dirs, tmp_path, monkeypatch):
    """An id already in the Hugging Face cache loads offline through the same checks as a folder."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--cadence-tests--tiny-i2v"
    shutil.copytree(tiny_dirs("wan22_14b_i2v"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = _load("cadence-tests/tiny-i2v", "wan22_14b_i2v")
    assert adapter.model_id.startswith("cadence-tests/tiny-i2v#") and adapter.boundary == 0.9
    with pytest.raises(ArchMismatchError, match="cadence-tests/tiny-i2v"):
        _load("cadence-tests/tiny-i2v", "wan22_5b")


def test_captions_longer_than_the_text_encoder_reads_are_reported(tiny_dirs, caplog):
    adapter = _load(tiny_dirs("wan21"), "wan21")
    long = "sks dances slowly " * 400
    exact = adapter.encode_prompts(["a short caption", long])
    assert exact[1].shape[0] == 512  # what the pipeline keeps
    assert "1 caption(s) are longer than the 512 tokens the text encoder reads" in caplog.text
    caplog.clear()
    adapter.encode_prompts(["a short caption"])
    assert "longer than" not in caplog.text
