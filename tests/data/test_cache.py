"""Latent/text caches against the real tiny Wan 2.2 I2V model: hit, miss, invalidation, resume, bad files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from cadence.config.schema import ModelConfig
from cadence.data.cache import CacheMissError, CacheReport, LatentCache, TextCache, read_fingerprint
from cadence.data.cache_command import cache_command, captions_to_cache, print_summary
from cadence.data.dataset import build_dataset_index
from cadence.data.media import CACHE_DIR_NAME
from cadence.models.registry import load_model_adapter
from cadence.models.tiny import write_tiny_model

ARCH = "wan22_14b_i2v"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / ARCH, ARCH, seed=0)


@pytest.fixture(scope="session")
def adapter(tiny_model_dir: Path):
    return load_model_adapter(
        ModelConfig(name_or_path=str(tiny_model_dir), arch=ARCH), torch.device("cpu"), torch.float32
    )


@pytest.fixture
def small_dir(synthetic_master: Path, tmp_path: Path) -> Path:
    """Two clips (one portrait) and one image: enough to exercise every path, cheap to encode."""
    folder = tmp_path / "small"
    folder.mkdir()
    for stem, ext in (("clip_00", "mp4"), ("clip_02", "mp4"), ("image_00", "png")):
        shutil.copy2(synthetic_master / f"{stem}.{ext}", folder / f"{stem}.{ext}")
        shutil.copy2(synthetic_master / f"{stem}.txt", folder / f"{stem}.txt")
    return folder


def _index(folder: Path, make_config, adapter, **ds):
    cfg = make_config(folder, resolution=[64], num_frames=5, **ds)
    return cfg, build_dataset_index(
        cfg, adapter.spatial_multiple, adapter.temporal_multiple, adapter.native_fps, 0
    )


def test_latents_hit_miss_and_invalidation(small_dir, make_config, adapter):
    _, index = _index(small_dir, make_config, adapter)
    cache = LatentCache.for_adapter(adapter)
    report = cache.ensure(index.train_items, adapter)
    assert (report.encoded, report.reused, report.skipped) == (3, 0, [])
    clip = next(it for it in index.train_items if it.path.name == "clip_00.mp4")
    entry = cache.load(clip)
    w, h, f = clip.bucket
    assert entry["latents"].shape == (16, (f - 1) // 4 + 1, h // 8, w // 8)
    assert entry["condition"].shape == (20, (f - 1) // 4 + 1, h // 8, w // 8)  # I2V: first-frame condition
    assert cache.path(clip).parent == small_dir / CACHE_DIR_NAME / ARCH

    again = LatentCache.for_adapter(adapter)
    assert again.ensure(index.train_items, adapter).reused == 3 and again.encode_calls == 0

    os.utime(clip.path, ns=(clip.mtime_ns + 10**9, clip.mtime_ns + 10**9))  # the source changed
    _, changed = _index(small_dir, make_config, adapter)
    third = LatentCache.for_adapter(adapter)
    with pytest.raises(CacheMissError, match="clip_00.mp4"):
        third.load(next(it for it in changed.train_items if it.path.name == "clip_00.mp4"))
    report = third.ensure(changed.train_items, adapter)
    assert (report.encoded, report.reused, third.encode_calls) == (1, 2, 1)


def test_frame_plan_and_i2v_flag_are_part_of_the_fingerprint(small_dir, make_config, adapter):
    _, index = _index(small_dir, make_config, adapter)
    LatentCache.for_adapter(adapter).ensure(index.train_items, adapter)
    _, other_frames = _index(small_dir, make_config, adapter, shrink_video_to_frames=False)
    cache = LatentCache.for_adapter(adapter)
    report = cache.ensure(other_frames.train_items, adapter)
    assert (report.encoded, report.reused) == (2, 1)  # the image keeps its single frame
    no_condition = LatentCache(adapter.model_id, adapter.arch, is_i2v=False)  # as for a T2V dataset/model
    assert no_condition.ensure(other_frames.train_items, adapter).encoded == 3
    assert set(no_condition.load(other_frames.train_items[0])) == {"latents"}


def test_interrupted_run_resumes_and_bad_files_are_skipped(small_dir, make_config, adapter):
    _, index = _index(small_dir, make_config, adapter)
    cache = LatentCache.for_adapter(adapter)
    done: list[str] = []

    def stop_after_two(status: str) -> None:
        done.append(status)
        if len(done) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-run

    with pytest.raises(KeyboardInterrupt):
        cache.ensure(index.train_items, adapter, progress=stop_after_two)
    files = list((small_dir / CACHE_DIR_NAME / ARCH).iterdir())
    assert len(files) == 2 and all(f.suffix == ".safetensors" for f in files)  # no temp files left
    # a clip that turns corrupt after indexing is skipped at encode time; finished entries stay
    victim = next(it for it in index.train_items if not LatentCache.for_adapter(adapter).is_valid(it))
    victim.path.write_bytes(b"\x00" * victim.file_size)
    os.utime(victim.path, ns=(victim.mtime_ns, victim.mtime_ns))
    resumed = LatentCache.for_adapter(adapter)
    report = resumed.ensure(index.train_items, adapter)
    assert (report.encoded, report.reused, [s.path for s in report.skipped]) == (0, 2, [victim.path])
    assert "re-encode" in report.skipped[0].reason or "remove it" in report.skipped[0].reason


def test_unreadable_cache_entry_is_re_encoded(small_dir, make_config, adapter):
    _, index = _index(small_dir, make_config, adapter)
    cache = LatentCache.for_adapter(adapter)
    cache.ensure(index.train_items, adapter)
    path = cache.path(index.train_items[0])
    path.write_bytes(path.read_bytes()[:100])  # truncated by something outside Cadence
    assert read_fingerprint(path) is None
    fresh = LatentCache.for_adapter(adapter)
    assert fresh.ensure(index.train_items, adapter).encoded == 1
    assert fresh.load(index.train_items[0])["latents"].ndim == 4


def test_text_cache_hit_miss_and_model_change(tmp_path, adapter):
    cache = TextCache(tmp_path / "text_cache", adapter.model_id, batch_size=2)
    report = cache.ensure(["a red ball", "", "a red ball", "sks dances"], adapter)
    assert (report.encoded, report.reused, cache.encode_calls) == (3, 0, 3)
    embed = cache.load("a red ball")
    assert embed.ndim == 2 and embed.shape[1] == adapter.encode_prompts(["x"])[0].shape[1]
    assert torch.equal(embed, adapter.encode_prompts(["a red ball"])[0])
    again = TextCache(tmp_path / "text_cache", adapter.model_id)
    report = again.ensure(["a red ball", "", "new caption"], adapter)
    assert (report.encoded, report.reused, again.encode_calls) == (1, 2, 1)
    other_model = TextCache(tmp_path / "text_cache", "another/model")
    with pytest.raises(CacheMissError):
        other_model.load("a red ball")


def test_cache_command_end_to_end(small_dir, tiny_model_dir, make_config, capsys):
    cfg = make_config(small_dir, resolution=[64], num_frames=5)
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.device = "cpu"
    (small_dir / "broken.mp4").write_bytes(b"junk" * 10)
    config_path = small_dir.parent / "job.json"
    config_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert cache_command(Namespace(config=str(config_path))) == 0
    out = capsys.readouterr().out
    assert "latents: 3 encoded, 0 reused, 1 skipped" in out and "broken.mp4" in out
    text_files = list((Path(cfg.run_dir) / "text_cache").glob("*.safetensors"))
    assert len(text_files) == 4  # three captions + the empty caption for caption dropout
    assert cache_command(Namespace(config=str(config_path))) == 0
    assert "latents: 0 encoded, 3 reused" in capsys.readouterr().out


def test_cache_command_reports_model_errors(small_dir, make_config, capsys):
    cfg = make_config(small_dir)
    cfg.model.name_or_path = str(small_dir / "no_model_here")
    config_path = small_dir.parent / "job.json"
    config_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert cache_command(Namespace(config=str(config_path))) == 1
    assert "no_model_here" in capsys.readouterr().out


def test_captions_to_cache_adds_empty_caption(small_dir, make_config, adapter):
    cfg, index = _index(small_dir, make_config, adapter)
    captions = captions_to_cache(cfg, index)
    assert captions[-1] == "" and len(captions) == len(set(captions)) == 4


def test_text_cache_reencodes_for_a_different_encoder(tmp_path, adapter):
    """A quantized or differently typed text encoder gives other embeddings: its cache entries are separate."""
    plain = TextCache(tmp_path / "text", adapter.model_id, encoder="fp32|none")
    plain.ensure(["a red ball", ""], adapter)
    assert plain.encode_calls == 2
    quantized = TextCache(tmp_path / "text", adapter.model_id, encoder="fp32|qfloat8")
    quantized.ensure(["a red ball", ""], adapter)
    assert quantized.encode_calls == 2, "entries of another encoder must not be reused"
    again = TextCache(tmp_path / "text", adapter.model_id, encoder="fp32|none")
    again.ensure(["a red ball", ""], adapter)
    assert again.encode_calls == 0


def test_models_sharing_a_dataset_keep_their_own_entries(
    small_dir, make_config, adapter, tiny_model_dir, tmp_path
):
    """Another model's job (a copy elsewhere, or a VAE swapped in place) never overwrites this model's entries."""
    _, index = _index(small_dir, make_config, adapter)
    assert LatentCache.for_adapter(adapter).ensure(index.train_items, adapter).encoded == 3
    other_dir = shutil.copytree(tiny_model_dir, tmp_path / "other_model")
    other = load_model_adapter(
        ModelConfig(name_or_path=str(other_dir), arch=ARCH), torch.device("cpu"), torch.float32
    )
    assert other.model_id != adapter.model_id
    assert LatentCache.for_adapter(other).ensure(index.train_items, other).encoded == 3
    back = LatentCache.for_adapter(adapter)
    assert back.ensure(index.train_items, adapter).reused == 3 and back.encode_calls == 0  # still there
    vae = next((other_dir / "vae").glob("*.safetensors"))
    os.utime(vae, ns=(vae.stat().st_mtime_ns + 10**9,) * 2)  # a different VAE file in the same folder
    swapped = load_model_adapter(
        ModelConfig(name_or_path=str(other_dir), arch=ARCH), torch.device("cpu"), torch.float32
    )
    assert swapped.model_id != other.model_id
    assert LatentCache.for_adapter(swapped).ensure(index.train_items, swapped).encoded == 3


def test_a_bad_file_is_decoded_and_reported_once_across_bucket_sizes(
    small_dir, make_config, adapter, caplog, capsys
):
    """With two resolutions every file has two items; a file that fails gives one decode attempt, one warning
    and one skipped entry, not one per bucket size."""
    cfg = make_config(small_dir, resolution=[64, 96], num_frames=5)
    index = build_dataset_index(
        cfg, adapter.spatial_multiple, adapter.temporal_multiple, adapter.native_fps, 0
    )
    bad = [small_dir / "clip_00.mp4", small_dir / "image_00.png"]
    assert all(sum(it.path == path for it in index.items) == 2 for path in bad)
    for path in bad:  # truncated after indexing (a copy that did not finish)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    statuses: list[str] = []
    with caplog.at_level(logging.WARNING, logger="cadence.data.cache"):
        report = LatentCache.for_adapter(adapter).ensure(index.items, adapter, progress=statuses.append)
    assert sorted(entry.path for entry in report.skipped) == bad
    assert len([r for r in caplog.records if r.getMessage().startswith("skipping")]) == 2
    assert (report.encoded, statuses.count("skipped"), len(statuses)) == (2, 4, 6)
    print_summary(index, report, CacheReport())
    out = capsys.readouterr().out
    assert "2 encoded, 0 reused, 2 skipped" in out and "skipped files (2):" in out
    assert all(out.count(f"{path}:") == 1 for path in bad)


def test_a_killed_writers_temp_files_are_swept_but_a_live_writers_are_not(small_dir, make_config, adapter):
    _, index = _index(small_dir, make_config, adapter)
    cache = LatentCache.for_adapter(adapter)
    folder = cache.folder(index.train_items[0])
    folder.mkdir(parents=True, exist_ok=True)
    texts = TextCache(small_dir / "text_cache", adapter.model_id)
    texts.folder.mkdir(parents=True, exist_ok=True)
    stale, live = folder / ".clip.safetensors.k1ll3d.tmp", folder / ".clip.safetensors.wr1t1ng.tmp"
    stale_text = texts.folder / ".caption.safetensors.k1ll3d.tmp"
    for path in (stale, live, stale_text):
        path.write_bytes(b"half an entry")
    an_hour_ago = time.time() - 3600
    for path in (stale, stale_text):
        os.utime(path, (an_hour_ago, an_hour_ago))
    cache.ensure(index.train_items, adapter)
    texts.ensure(["a caption"], adapter)
    assert not stale.exists() and not stale_text.exists()
    assert live.exists(), "a temp file written just now may belong to another job filling the shared cache"
