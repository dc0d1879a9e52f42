"""Module-name mapping between diffusers and the original Wan / ComfyUI layout."""

from __future__ import annotations

import pytest
import torch

from cadence.models.tiny import build_tiny_pipeline
from cadence.networks import keymap


@pytest.mark.parametrize(
    ("diffusers", "original"),
    [
        ("blocks.0.attn1.to_q", "blocks.0.self_attn.q"),
        ("blocks.3.attn1.to_out.0", "blocks.3.self_attn.o"),
        ("blocks.12.attn2.to_v", "blocks.12.cross_attn.v"),
        ("blocks.1.attn2.add_k_proj", "blocks.1.cross_attn.k_img"),
        ("blocks.1.attn2.add_v_proj", "blocks.1.cross_attn.v_img"),
        ("blocks.0.ffn.net.0.proj", "blocks.0.ffn.0"),
        ("blocks.0.ffn.net.2", "blocks.0.ffn.2"),
        ("condition_embedder.time_proj", "time_projection.1"),
        ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
        ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
        ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
        ("proj_out", "head.head"),
        ("patch_embedding", "patch_embedding"),
    ],
)
def test_known_names_map_both_ways(diffusers: str, original: str) -> None:
    assert keymap.to_original(diffusers) == original
    assert keymap.to_diffusers(original) == diffusers


def test_every_linear_and_conv_of_the_wan21_i2v_transformer_round_trips() -> None:
    model = build_tiny_pipeline("wan21_i2v", seed=0).transformer
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d))]
    assert "blocks.0.attn2.add_k_proj" in names
    for name in names:
        assert keymap.to_diffusers(keymap.to_original(name)) == name


def test_kohya_names_parse() -> None:
    assert keymap.kohya_to_original("blocks_7_cross_attn_k_img") == "blocks.7.cross_attn.k_img"
    assert keymap.kohya_to_original("blocks_0_ffn_2") == "blocks.0.ffn.2"
    assert keymap.kohya_to_original("head_head") == "head.head"


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="blocks.0.attn1.nonsense"):
        keymap.to_original("blocks.0.attn1.nonsense")
