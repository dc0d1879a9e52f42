"""Which modules get adapters: defaults, substring filters, regex filters, conv."""

from __future__ import annotations

import pytest

from cadence.config.schema import NetworkConfig
from cadence.networks.targeting import select_targets


def _cfg(**kwargs) -> NetworkConfig:
    conv = kwargs.pop("conv", None)
    return NetworkConfig(linear=4, conv=conv, network_kwargs=kwargs)


def test_default_targets_every_block_linear(transformer) -> None:
    names = set(select_targets(transformer, _cfg()))
    assert len(names) == 2 * 10  # 2 blocks x (4 self-attn + 4 cross-attn + 2 ffn)
    assert "blocks.0.attn1.to_q" in names and "blocks.1.attn2.to_out.0" in names
    assert "blocks.1.ffn.net.0.proj" in names and "blocks.0.ffn.net.2" in names
    assert not any(not n.startswith("blocks.") for n in names)


def test_only_if_contains_restricts_and_ignore_wins(transformer) -> None:
    names = set(select_targets(transformer, _cfg(only_if_contains=["attn1"], ignore_if_contains=["to_k"])))
    assert names == {f"blocks.{b}.attn1.{p}" for b in (0, 1) for p in ("to_q", "to_v", "to_out.0")}


def test_prefix_is_part_of_the_matched_name(transformer) -> None:
    names = set(select_targets(transformer, _cfg(only_if_contains=["transformer.blocks.1."])))
    assert names and all(n.startswith("blocks.1.") for n in names)


def test_regex_include_adds_and_exclude_removes(transformer) -> None:
    cfg = _cfg(include_patterns=[r"proj_out$"], exclude_patterns=[r"\.ffn\.", r"blocks\.0\."])
    names = set(select_targets(transformer, cfg))
    assert "proj_out" in names
    assert not any(".ffn." in n or n.startswith("blocks.0.") for n in names)
    assert "blocks.1.attn2.to_k" in names


def test_musubi_idiom_include_exempts_from_exclude_with_either_naming(transformer) -> None:
    """musubi-tuner: a module is skipped when an exclude pattern matches and no include pattern does."""
    attention = set(select_targets(transformer, _cfg(exclude_patterns=[".*"], include_patterns=[".*attn.*"])))
    assert attention == {n for n in select_targets(transformer, _cfg()) if ".attn" in n}
    # original-Wan names (musubi's and ComfyUI's): self_attn = attn1, ffn.0 = ffn.net.0.proj
    selected = set(
        select_targets(
            transformer, _cfg(exclude_patterns=[".*"], include_patterns=[r".*self_attn\.(q|k)", r"ffn\.0"])
        )
    )
    assert selected == {
        f"blocks.{b}.{m}" for b in (0, 1) for m in ("attn1.to_q", "attn1.to_k", "ffn.net.0.proj")
    }
    assert not any("attn1" in n for n in select_targets(transformer, _cfg(exclude_patterns=["self_attn"])))
    # one pattern mixing both namings means both parts (self_attn: original, ffn: both)
    mixed = set(
        select_targets(transformer, _cfg(exclude_patterns=[".*"], include_patterns=[".*(self_attn|ffn).*"]))
    )
    assert mixed == {n for n in select_targets(transformer, _cfg()) if ".attn1." in n or ".ffn." in n}
    no_cross = set(select_targets(transformer, _cfg(exclude_patterns=[".*(cross_attn|ffn).*"])))
    assert no_cross and not any(".attn2." in n or ".ffn." in n for n in no_cross)
    # a negative pattern written for diffusers names is not turned against the other naming
    block0 = set(select_targets(transformer, _cfg(exclude_patterns=[r"^(?!transformer\.blocks\.0\.)"])))
    assert block0 and all(n.startswith("blocks.0.") for n in block0)
    original = set(
        select_targets(transformer, _cfg(exclude_patterns=[r"^(?!blocks\.1\.)"]))
    )  # original naming
    assert original and all(n.startswith("blocks.1.") for n in original)
    kept = select_targets(transformer, _cfg(ignore_if_contains=["attn"], include_patterns=[".*attn.*"]))
    assert not any("attn" in n for n in kept)  # ignore_if_contains always removes


def test_conv_only_when_named_and_conv_set(transformer) -> None:
    assert "patch_embedding" not in select_targets(transformer, _cfg(include_patterns=["patch_embedding"]))
    names = select_targets(transformer, _cfg(conv=2, include_patterns=["patch_embedding"]))
    assert "patch_embedding" in names
    assert "patch_embedding" not in select_targets(transformer, _cfg(conv=2))


def test_no_match_names_the_filters_and_lists_modules(transformer) -> None:
    with pytest.raises(ValueError, match=r"only_if_contains=\['nothing_here'\].*transformer\.blocks\.0"):
        select_targets(transformer, _cfg(only_if_contains=["nothing_here"]))


def test_bad_regex_names_the_field(transformer) -> None:
    with pytest.raises(ValueError, match="exclude_patterns"):
        select_targets(transformer, _cfg(exclude_patterns=["("]))
