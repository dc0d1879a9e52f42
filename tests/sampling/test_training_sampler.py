"""TrainingSampler on the tiny Wan 2.2 I2V model: schedule, files, frame rate, and no side effects."""

from __future__ import annotations

import json
import random

import av
import numpy as np
import pytest
import torch
from PIL import Image

from cadence.config.errors import ConfigError
from cadence.sampling import TrainingSampler
from cadence.train.rng import capture_global_rng

from .conftest import random_networks, sample_job, write_job


def _decode(path) -> tuple[list[np.ndarray], object]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames, rate


def test_schedule_baseline_every_and_skip(loaded):
    cfg, adapter, networks = loaded
    sampler = TrainingSampler(cfg, adapter, networks, cfg.run_dir / "samples")
    assert [s for s in range(0, 13) if sampler.due(s)] == [0, 4, 8, 12]
    cfg.sample.skip_first_sample = True
    cfg.sample.sample_start_step = 6
    assert [s for s in range(0, 13) if sampler.due(s)] == [6, 10]
    cfg.train.disable_sampling = True
    off = TrainingSampler(cfg, adapter, networks, cfg.run_dir / "samples")
    assert not any(off.due(s) for s in range(0, 13)) and off.run(4) == []


def test_samples_written_with_names_rate_and_sidecar(loaded, ctrl_png):
    cfg, adapter, networks = loaded
    out = cfg.run_dir / "samples"
    sampler = TrainingSampler(cfg, adapter, networks, out)
    written = sampler.run(0) + sampler.run(12)
    names = sorted(p.name for p in out.iterdir())
    expected = [
        f"{step:09d}_{i:02d}.{ext}"
        for step in (0, 12)
        for i in (0, 1)
        for ext in ("json", "mp4", "png", "webp")
    ]
    assert names == expected and sorted(p.name for p in written) == expected
    frames, rate = _decode(out / "000000012_00.mp4")
    assert rate == 16 and len(frames) == 5 and frames[0].shape == (32, 32, 3)
    with Image.open(out / "000000012_00.webp") as webp:
        webp.seek(1)
        webp.load()
        assert webp.n_frames == 5 and webp.info["duration"] == round(1000 / 16)
    with Image.open(out / "000000012_00.png") as png:
        assert png.size == (32, 32)
    side = json.loads((out / "000000012_01.json").read_text())
    assert side["prompt"] == "a dog" and side["seed"] == 99 and side["step"] == 12
    assert side["multiplier"] == 0.5 and side["fps"] == 16 and side["neg"] == "blurry"
    assert side["alphas"]["high_noise"]["linear"] == 2.0 and side["ctrl_img"] == str(ctrl_png)
    first = json.loads((out / "000000012_00.json").read_text())
    assert first["prompt"] == "a sks cat" and first["seed"] == 11  # walk_seed: 11 + index 0
    # the adapters change the video, and the sample is reproducible for the same step and weights
    sampler.run(13)
    assert (out / "000000013_00.png").read_bytes() == (out / "000000012_00.png").read_bytes()
    a = np.asarray(Image.open(out / "000000012_00.png"))
    for net in networks.values():
        net.enabled = False
    sampler.run(14)
    assert not np.array_equal(a, np.asarray(Image.open(out / "000000014_00.png")))


def test_run_leaves_training_state_untouched(loaded):
    cfg, adapter, networks = loaded
    for spec in adapter.experts:
        adapter.transformer(spec.name).train()
    networks["high_noise"].multiplier = 0.7
    networks["low_noise"].eval()
    torch.manual_seed(123)
    np.random.seed(4)
    random.seed(5)
    before = capture_global_rng()

    def third_party_draws(_module, _args):  # code inside the pipeline that uses the global streams
        torch.rand(4)
        np.random.rand(2)
        random.random()

    handle = adapter.transformer("high_noise").register_forward_pre_hook(third_party_draws)
    try:
        sampler = TrainingSampler(cfg, adapter, networks, cfg.run_dir / "samples")
        assert sampler.run(0)
    finally:
        handle.remove()
    after = capture_global_rng()
    assert torch.equal(before["torch"], after["torch"])
    assert np.array_equal(before["numpy"][1], after["numpy"][1]) and before["numpy"][2:] == after["numpy"][2:]
    assert before["random"] == after["random"]
    assert all(adapter.transformer(s.name).training for s in adapter.experts)
    assert networks["high_noise"].training and not networks["low_noise"].training
    assert networks["high_noise"].multiplier == 0.7 and networks["low_noise"].multiplier == 1.0
    assert torch.is_grad_enabled()
    # the next draw is the one training would have made without sampling
    torch.set_rng_state(before["torch"])
    expected = torch.rand(3)
    torch.set_rng_state(after["torch"])
    assert torch.equal(torch.rand(3), expected)


def test_oom_while_sampling_is_logged_and_training_continues(loaded, caplog):
    cfg, adapter, networks = loaded
    transformer = adapter.transformer("low_noise")
    transformer.train()

    def out_of_memory(_module, _args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = transformer.register_forward_pre_hook(out_of_memory)
    try:
        before = capture_global_rng()
        written = TrainingSampler(cfg, adapter, networks, cfg.run_dir / "samples").run(4)
    finally:
        handle.remove()
    assert written == []
    assert "out of memory while sampling" in caplog.text
    assert transformer.training and torch.equal(capture_global_rng()["torch"], before["torch"])


def test_bad_settings_fail_before_training(tiny_i2v, ctrl_png, tmp_path, loaded):
    _, adapter, networks = loaded
    from cadence.config.loader import load_config

    job = sample_job(
        tiny_i2v,
        tmp_path / "runs",
        width=40,
        attention_backend="sage",
        samples=[{"prompt": "p", "ctrl_img": str(ctrl_png), "height": 24}],
    )
    cfg = load_config(write_job(tmp_path / "bad.yaml", job))
    with pytest.raises(ConfigError) as err:
        TrainingSampler(cfg, adapter, networks, tmp_path / "samples")
    issues = dict(err.value.issues)
    assert set(issues) == {"sample.width", "sample.samples[0].height", "sample.attention_backend"}
    assert "multiple of 16" in issues["sample.width"] and "try 32 or 48" in issues["sample.width"]
    assert issues["sample.attention_backend"].startswith("sage is unavailable here: no CUDA device")


def test_ti2v_5b_samples_at_24_fps_with_and_without_ctrl_img(tiny_5b, ctrl_png, tmp_path):
    from cadence.config.loader import load_config
    from cadence.models.registry import load_model_adapter

    job = sample_job(
        tiny_5b,
        tmp_path / "runs",
        arch="wan22_5b",
        prompts=["a [trigger] wave"],
        samples=[{"prompt": "from an image", "ctrl_img": str(ctrl_png)}],
    )
    cfg = load_config(write_job(tmp_path / "job5b.yaml", job))
    adapter = load_model_adapter(cfg.model, torch.device("cpu"), torch.float32)
    sampler = TrainingSampler(cfg, adapter, random_networks(adapter, cfg), cfg.run_dir / "samples")
    written = sampler.run(0)
    assert [p.name for p in written[::4]] == ["000000000_00.mp4", "000000000_01.mp4"]
    for mp4 in written[::4]:
        frames, rate = _decode(mp4)
        assert rate == 24 and len(frames) == 5 and frames[0].shape == (32, 32, 3)
    assert json.loads(written[7].read_text())["fps"] == 24
    assert json.loads(written[3].read_text())["ctrl_img"] == str(ctrl_png)


def test_unloaded_text_encoder_reads_prompts_from_the_text_cache(loaded):
    """train.cache_text_embeddings unloads T5: sample prompts come from the run's text cache instead."""
    from cadence.data.cache import CacheMissError
    from cadence.data.cache_command import text_cache_for
    from cadence.sampling import sample_texts

    cfg, adapter, networks = loaded
    with_encoder = TrainingSampler(cfg, adapter, networks, cfg.run_dir / "a").run(1)
    text_cache_for(cfg, adapter.model_id).ensure(sample_texts(cfg), adapter)  # as training fills it
    adapter.unload_text_encoder()
    from_cache = TrainingSampler(cfg, adapter, networks, cfg.run_dir / "b").run(1)
    for a, b in zip(with_encoder[2::4], from_cache[2::4], strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    cfg.sample.samples[0].prompt = "a prompt nobody cached"
    with pytest.raises(CacheMissError, match="no text embedding cached"):
        TrainingSampler(cfg, adapter, networks, cfg.run_dir / "c")
