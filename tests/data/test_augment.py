"""flip_x / flip_y and temporal_jitter on real files: a real mp4 and png through PyAV, the tiny Wan 2.2 I2V VAE
and the latent cache, compared with what encoding the mirrored (or jittered) pixels directly gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from cadence.config.schema import JobConfig, ModelConfig
from cadence.data.augment import VARIANT_SALT, cache_units, variant_for
from cadence.data.cache import LatentCache
from cadence.data.cache_command import run_caches
from cadence.data.caption_tokens import variation_rng
from cadence.data.controls import control_pixels
from cadence.data.dataset import build_dataset_index, load_pixels, to_model_range
from cadence.data.synthetic import render_frame, write_clip
from cadence.data.video import decode_video_frames
from cadence.models.registry import load_model_adapter

ARCH = "wan22_14b_i2v"


@pytest.fixture(scope="module")
def adapter(tiny_i2v: Path):
    return load_model_adapter(
        ModelConfig(name_or_path=str(tiny_i2v), arch=ARCH), torch.device("cpu"), torch.float32
    )


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """One 48x32 clip of 17 frames and one 32x32 png: small enough to encode in well under a second."""
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder / "clip.mp4", 48, 32, 17, 16, seed=3)
    Image.fromarray(render_frame(4, 32, 32, seed=9)).save(folder / "still.png")
    for stem in ("clip", "still"):
        (folder / f"{stem}.txt").write_text(f"{stem}, moving left", encoding="utf-8")
    return folder


def _job(folder: Path, tmp_path: Path, seed: int = 5, **dataset: object) -> JobConfig:
    return JobConfig(
        name="aug",
        training_folder=tmp_path / "out",
        model={"name_or_path": "tiny", "arch": ARCH},
        datasets=[{"folder_path": folder, "resolution": [32], "num_frames": 5, **dataset}],
        train={"seed": seed, "disable_sampling": True},
    )


def _index(cfg: JobConfig, adapter):
    return build_dataset_index(cfg, adapter.spatial_multiple, adapter.temporal_multiple, adapter.native_fps)


def _mirror(pixels: torch.Tensor, flip: str) -> torch.Tensor:
    """The test's own flip: numpy's fliplr/flipud on each [H, W] plane."""
    array = pixels.numpy()
    if "x" in flip:
        array = array[..., ::-1]
    if "y" in flip:
        array = array[..., ::-1, :]
    return torch.from_numpy(array.copy())


def test_flip_copies_are_encoded_mirrored_with_their_i2v_condition(media, tmp_path, adapter):
    cfg = _job(media, tmp_path, flip_x=True, flip_y=True)
    index = _index(cfg, adapter)
    flips = {
        name: [it.flip for it in index.train_items if it.path.name == name]
        for name in ("clip.mp4", "still.png")
    }
    assert flips == {
        "clip.mp4": ["", "x", "y", "xy"],
        "still.png": ["", "x", "y", "xy"],
    }  # ai-toolkit's order
    filled = run_caches(cfg, adapter, index, show_progress=False)
    assert filled.latent_report.encoded == 8

    plain_cfg = _job(media, tmp_path)  # the unflipped entries keep the names they had without flips
    plain_cache = LatentCache.for_job(plain_cfg, adapter, Path(plain_cfg.run_dir))
    plain_items = {it.path.name: it for it in _index(plain_cfg, adapter).train_items}
    for name, plain in plain_items.items():
        assert filled.latents.path(plain) == plain_cache.path(plain)
        pixels = load_pixels(plain)  # the real decoder, at the bucket size
        for item in (it for it in index.train_items if it.path == plain.path):
            entry = filled.latents.load(item)
            mirrored = _mirror(pixels, item.flip)
            expected = adapter.encode_video(mirrored[None])[0]
            condition = adapter.encode_condition(mirrored[None, :, 0], plain.num_frames)["condition"][0]
            assert torch.equal(entry["latents"], expected), (name, item.flip)
            assert torch.equal(entry["condition"], condition), (name, item.flip)  # the first frame flips too
            if item.flip:
                assert not torch.equal(entry["latents"], filled.latents.load(plain)["latents"])
                assert filled.latents.fingerprint(item)["flip"] == item.flip


def test_a_flipped_copy_flips_its_control_image(media, tmp_path, adapter):
    controls = tmp_path / "controls"
    controls.mkdir()
    Image.fromarray(render_frame(11, 48, 32, seed=21)).save(controls / "clip.png")
    cfg = _job(media, tmp_path, flip_x=True, control_path=controls, media="videos")
    index = _index(cfg, adapter)
    filled = run_caches(cfg, adapter, index, show_progress=False)
    plain, mirrored = index.train_items
    assert mirrored.flip == "x" and mirrored.control == controls / "clip.png"
    image = _mirror(control_pixels(plain), "x")  # the control image at the bucket size, then mirrored
    expected = adapter.encode_condition(image[None], mirrored.num_frames)["condition"][0]
    assert torch.equal(filled.latents.load(mirrored)["condition"], expected)
    assert not torch.equal(filled.latents.load(plain)["condition"], expected)


def test_temporal_jitter_plans_follow_the_fork_and_each_is_one_cached_entry(media, tmp_path, adapter):
    cfg = _job(media, tmp_path, temporal_jitter=2, temporal_jitter_variants=3, frame_extraction="head")
    index = _index(cfg, adapter)
    clip = next(it for it in index.train_items if it.kind == "video")
    still = next(it for it in index.train_items if it.kind == "image")
    assert clip.frames == (0, 1, 2, 3, 4) and still.jitter == ()
    assert len(clip.jitter) == 3 and len(set(clip.jitter)) == 3
    for plan in clip.jitter:  # each index moves by its own draw in -2..2, clamped to the clip's frames
        assert all(abs(p - f) <= 2 and 0 <= p <= 16 for p, f in zip(plan, clip.frames, strict=True))
    moved = [p - f for plan in clip.jitter for p, f in zip(plan[1:], clip.frames[1:], strict=True)]
    assert min(moved) < 0 < max(moved)
    assert next(it for it in _index(cfg, adapter).train_items if it.kind == "video").jitter == clip.jitter
    other_seed = _index(
        _job(media, tmp_path, seed=6, temporal_jitter=2, temporal_jitter_variants=3, frame_extraction="head"),
        adapter,
    )
    assert next(it for it in other_seed.train_items if it.kind == "video").jitter != clip.jitter

    assert len(cache_units(index.train_items)) == 4
    filled = run_caches(cfg, adapter, index, show_progress=False)
    assert filled.latent_report.encoded == 4
    for k, variant in enumerate(clip.variants()):
        frames = decode_video_frames(clip.path, clip.jitter[k], clip.width, clip.height, clip.source_fps)
        pixels = to_model_range(frames)
        entry = filled.latents.load(variant)
        assert torch.equal(entry["latents"], adapter.encode_video(pixels[None])[0])
        condition = adapter.encode_condition(pixels[None, :, 0], clip.num_frames)["condition"][0]
        assert torch.equal(entry["condition"], condition)  # the condition is the plan's own first frame

    draws = [k / 40 for k in range(40)]
    chosen = [variant_for(clip, d).frames for d in draws]
    assert set(chosen) == set(clip.jitter)  # every plan gets trained
    assert chosen == [clip.jitter[variation_rng(d, VARIANT_SALT).randrange(3)] for d in draws]
    assert variant_for(clip, None).frames == clip.jitter[0] and variant_for(still, 0.3) is still


def test_keys_that_cannot_act_are_refused(media, tmp_path):
    from pydantic import ValidationError

    for bad, word in (
        ({"temporal_jitter": 1, "media": "images"}, "temporal_jitter"),
        ({"temporal_jitter_variants": 8}, "temporal_jitter_variants"),
        ({"keep_tokens": 2, "shuffle_tokens": True}, "keep_tokens"),
        ({"is_eval": True, "flip_x": True, "loss_multiplier": 2.0}, "loss_multiplier"),
    ):
        with pytest.raises(ValidationError, match=word):
            _job(media, tmp_path, **bad)
    assert _job(media, tmp_path, is_eval=True, flip_x=True).datasets[0].flip_x  # flips do act on an eval set
