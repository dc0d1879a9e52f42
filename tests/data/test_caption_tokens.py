"""shuffle_tokens / token_dropout_rate / keep_tokens: ai-toolkit's caption steps, drawn from the trainer's
caption stream, and the varied captions encoded by the real tiny text encoder (never from a stale cache)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from cadence.config.schema import JobConfig, ModelConfig
from cadence.data.cache_command import run_caches
from cadence.data.caption_tokens import CaptionVariantTexts, CaptionVariation, variation_rng, vary_caption
from cadence.data.dataset import build_dataset_index
from cadence.data.synthetic import write_clip
from cadence.models.registry import load_model_adapter
from cadence.train.batches import BatchAssembler

ARCH = "wan22_14b_i2v"
TEXT = "a red ball, blue floor, [trigger], slow motion, soft light"


def test_dropout_keeps_the_first_tokens_and_the_trigger_word_is_put_in_afterwards() -> None:
    drop_all = CaptionVariation(dropout_rate=1.0, keep_tokens=2, trigger="sks")
    # [trigger] was dropped with its token, so the trigger word is prepended afterwards (ai-toolkit's order)
    assert vary_caption(TEXT, drop_all, random.Random(0)) == "sks a red ball, blue floor"
    assert vary_caption("a, b", CaptionVariation(dropout_rate=1.0, trigger="sks"), random.Random(0)) == "sks"
    assert vary_caption("a, b", CaptionVariation(dropout_rate=1.0), random.Random(0)) == ""
    regularisation = CaptionVariation(dropout_rate=1.0, keep_tokens=3, trigger="sks", add_trigger=False)
    assert (
        vary_caption("a cat, [trigger] hat, rain", regularisation, random.Random(0)) == "a cat, sks hat, rain"
    )
    assert vary_caption("a cat, rain", regularisation, random.Random(0)) == "a cat, rain"  # none prepended
    half = CaptionVariation(dropout_rate=0.5, keep_tokens=1)
    kept = [
        vary_caption("t0, t1, t2, t3, t4, t5, t6, t7, t8, t9", half, random.Random(s)) for s in range(400)
    ]
    assert all(k.startswith("t0") for k in kept)
    share = sum(len(k.split(", ")) - 1 for k in kept) / (400 * 9)
    assert 0.45 < share < 0.55  # each later token survives with probability 1 - rate


def test_shuffle_moves_every_token_and_the_trigger_word_with_the_token_it_was_prepended_to() -> None:
    shuffle = CaptionVariation(shuffle=True, trigger="sks")
    variants = [vary_caption("a, b, c, d", shuffle, random.Random(s)) for s in range(300)]
    for variant in variants:
        tokens = variant.split(", ")
        assert sorted(t.removeprefix("sks ") for t in tokens) == ["a", "b", "c", "d"]
        assert sum(t.startswith("sks ") for t in tokens) == 1  # glued to one token, as ai-toolkit prepends it
    assert len({v.split(", ").index(next(t for t in v.split(", ") if "sks" in t)) for v in variants}) == 4
    assert len(set(variants)) > 20
    assert vary_caption("a, b, c, d", shuffle, variation_rng(0.25, 0)) == vary_caption(
        "a, b, c, d", shuffle, variation_rng(0.25, 0)
    )


@pytest.fixture(scope="module")
def adapter(tiny_i2v: Path):
    return load_model_adapter(
        ModelConfig(name_or_path=str(tiny_i2v), arch=ARCH), torch.device("cpu"), torch.float32
    )


def test_batches_train_on_varied_captions_encoded_by_the_text_encoder(tmp_path, adapter) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder / "clip.mp4", 32, 32, 9, 16, seed=1)
    (folder / "clip.txt").write_text(TEXT, encoding="utf-8")
    cfg = JobConfig(
        name="tokens",
        training_folder=tmp_path / "out",
        trigger_word="sks",
        model={"name_or_path": "tiny", "arch": ARCH},
        datasets=[
            {
                "folder_path": folder,
                "resolution": [32],
                "num_frames": 5,
                "shuffle_tokens": True,
                "token_dropout_rate": 0.3,
                "keep_tokens": 1,
                "caption_dropout_rate": 0.2,
            }
        ],
        train={"disable_sampling": True},
    )
    index = build_dataset_index(cfg, adapter.spatial_multiple, adapter.temporal_multiple, adapter.native_fps)
    [item] = index.train_items
    assert (
        item.caption == "a red ball, blue floor, sks, slow motion, soft light"
    )  # as read (the cache has it)
    assert item.caption_source == TEXT and item.variation == CaptionVariation(True, 0.3, 1, "sks", True)
    filled = run_caches(cfg, adapter, index, show_progress=False)
    texts = CaptionVariantTexts(filled.texts, adapter.encode_prompts, [item.caption, ""], capacity=3)
    batches = BatchAssembler(index.train_items, filled.latents, texts, adapter.pad_text, [0.2])

    stream = random.Random(11)
    seen = []
    for _ in range(12):
        before = stream.getstate()
        batch = batches.assemble([0], stream)
        check = random.Random()
        check.setstate(before)
        draw = check.random()  # exactly one draw per item, whatever the caption
        assert stream.getstate() == check.getstate()
        [caption] = batch.captions
        expected = "" if draw < 0.2 else vary_caption(TEXT, item.variation, variation_rng(draw, 0))
        assert caption == expected
        seen.append(caption)
        if caption:
            tokens = caption.split(", ")
            assert "sks" in caption and any(t.endswith("a red ball") for t in tokens)  # keep_tokens: 1
        direct = adapter.pad_text(adapter.encode_prompts([caption]))  # what the text encoder gives it now
        assert torch.equal(batch.text, direct)
    assert "" in seen and len(set(seen)) > 4
    varied = [c for c in seen if c not in texts.cached]  # the cached captions are never re-encoded
    assert len(set(varied)) <= texts.encoded <= len(varied)
    assert len(texts._recent) <= 3  # the in-memory variants stay bounded
    assert batches.assemble([0], None).captions == [item.caption]  # evaluation: the caption as read


def test_token_keys_are_refused_where_the_text_encoder_is_freed() -> None:
    from cadence.config import ConfigError, load_config_dict

    for train, key in (
        ({"cache_text_embeddings": True}, "cache_text_embeddings"),
        ({"unload_text_encoder": True}, "unload_text_encoder"),
    ):
        body = {
            "name": "t",
            "model": {"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": ARCH},
            "datasets": [{"folder_path": "/x", "shuffle_tokens": True}],
            "train": {"disable_sampling": True, **train},
        }
        with pytest.raises(ConfigError) as err:
            load_config_dict(body)
        issues = dict(err.value.issues)
        assert key in issues["datasets[0].shuffle_tokens"]


def test_low_vram_says_that_varied_captions_are_encoded_on_the_cpu(caplog) -> None:
    from cadence.config import load_config_dict

    body = {
        "name": "t",
        "model": {"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": ARCH, "low_vram": True},
        "datasets": [{"folder_path": "/x", "token_dropout_rate": 0.1}],
        "train": {"disable_sampling": True},
    }
    with caplog.at_level("WARNING"):
        load_config_dict(body)
    assert any("datasets[0].token_dropout_rate" in r.message and "CPU" in r.message for r in caplog.records)
