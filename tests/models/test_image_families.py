"""FLUX.1, Qwen-Image and Z-Image behind the adapter contract: the tiny folders load in diffusers' own pipelines
unchanged, and what Cadence feeds the transformer (text, packed latents, timestep) is what those pipelines feed
it while sampling (the train/infer contract, checked by hooking the pipeline's own transformer call)."""

from __future__ import annotations

import math

import diffusers
import pytest
import torch

from cadence.config.schema import ModelConfig
from cadence.models import detect_arch, load_model_adapter
from cadence.models.registry import arch_names, arch_spec, canonical_arch, family_of, read_model_index

CPU = torch.device("cpu")
IMAGE_ARCHS = ("flux", "flux_schnell", "qwen_image", "zimage")
PROMPT = "a red car turns on a wet street at night"


def _adapter(folder, arch):
    return load_model_adapter(ModelConfig(name_or_path=str(folder), arch=arch), CPU, torch.float32)


def test_every_arch_is_registered_once_with_aitoolkit_spellings():
    names = arch_names()
    assert len(names) == len(set(names)) and set(IMAGE_ARCHS) <= set(names)
    assert {canonical_arch(v) for v in ("flux:dev", "flux:schnell", "qwen_image:2512", "zimage:turbo")} == {
        "flux",
        "flux_schnell",
        "qwen_image",
        "zimage",
    }
    assert canonical_arch("sdxl") is None
    for arch in IMAGE_ARCHS:
        spec = arch_spec(arch)
        assert spec.image_only and spec.experts == ("main",) and spec.temporal_multiple == 1
        assert family_of(arch).keymap is not None


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_tiny_folder_loads_in_its_diffusers_pipeline(tiny_dirs, arch):
    folder = tiny_dirs(arch)
    cls = getattr(diffusers, read_model_index(folder)["_class_name"])
    pipe = cls.from_pretrained(str(folder))
    assert detect_arch(folder) == arch
    assert pipe.transformer.__class__.__name__ in family_of(arch).transformer_classes


def _call_kwargs(arch: str, adapter, prompt):
    """Pipeline arguments with embeddings passed in and no guidance tricks (CFG off, FLUX dev's guidance
    embedding at Cadence's training value 1.0)."""
    common = dict(
        height=32, width=48, num_inference_steps=2, output_type="latent"
    )  # the first call is hooked
    if arch.startswith("flux"):
        return dict(
            common, prompt_embeds=prompt["embeds"], pooled_prompt_embeds=prompt["pooled"], guidance_scale=1.0
        )
    if arch == "qwen_image":
        return dict(
            common, prompt_embeds=prompt["embeds"], prompt_embeds_mask=prompt["mask"], true_cfg_scale=1.0
        )
    states = [prompt["embeds"][0, : int(prompt["lengths"][0])]]
    return dict(common, prompt_embeds=states, guidance_scale=0.0)


def _pipeline_view(arch: str, call: dict, out, vae_scale: int):
    """(noisy latents [1, 16, h, w], sigma, velocity noise - x0) as the pipeline's transformer call saw them."""
    if arch.startswith("flux") or arch == "qwen_image":
        cls = diffusers.FluxPipeline if arch.startswith("flux") else diffusers.QwenImagePipeline
        noisy = cls._unpack_latents(call["hidden_states"], 32, 48, vae_scale)
        velocity = cls._unpack_latents(out[0], 32, 48, vae_scale)
        if arch == "qwen_image":
            noisy, velocity = noisy[:, :, 0], velocity[:, :, 0]
        return noisy, call["timestep"], velocity
    x, t_model = call["args"][0], call["args"][1]
    return torch.stack(x).squeeze(2), 1.0 - t_model, -torch.stack(out[0]).squeeze(2)


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_predict_equals_the_pipelines_own_transformer_call(tiny_dirs, arch):
    adapter = _adapter(tiny_dirs(arch), arch)
    prompt = adapter.pad_text(adapter.encode_prompts([PROMPT]))
    pipe = adapter.build_pipeline()
    seen: dict = {}

    def hook(_module, args, kwargs, output):
        seen.setdefault("call", {**kwargs, "args": args})
        seen.setdefault("out", output)

    handle = adapter.transformer("main").register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(**_call_kwargs(arch, adapter, prompt), generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    noisy, sigma, velocity = _pipeline_view(arch, seen["call"], seen["out"], adapter.vae_scale)
    with torch.no_grad():
        ours = adapter.predict("main", noisy, sigma.reshape(-1).float(), prompt, {})
    assert ours.shape == noisy.shape == velocity.shape
    torch.testing.assert_close(ours, velocity, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_text_embeddings_equal_the_pipelines_encode_prompt(tiny_dirs, arch):
    adapter = _adapter(tiny_dirs(arch), arch)
    ours = adapter.encode_prompts([PROMPT])[0]
    pipe = adapter.build_pipeline()
    with torch.no_grad():
        if arch.startswith("flux"):
            embeds, pooled, _ids = pipe.encode_prompt(
                PROMPT, prompt_2=None, device=CPU, max_sequence_length=512
            )
            torch.testing.assert_close(ours["embeds"], embeds[0])
            torch.testing.assert_close(ours["pooled"], pooled[0])
        elif arch == "qwen_image":
            embeds, mask = pipe.encode_prompt(PROMPT, device=CPU, max_sequence_length=512)
            assert mask is None  # one prompt: the pipeline drops an all-ones mask
            torch.testing.assert_close(ours["embeds"], embeds[0])
        else:
            embeds, _ = pipe.encode_prompt(PROMPT, device=CPU, do_classifier_free_guidance=False)
            torch.testing.assert_close(ours, embeds[0])


def test_image_latents_round_trip_through_the_pipelines_decode(tiny_dirs):
    """encode_video normalises as the pipelines denormalise: FLUX's (z - shift) * scale is undone exactly."""
    adapter = _adapter(tiny_dirs("flux"), "flux")
    pixels = torch.rand(1, 3, 1, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = adapter.encode_video(pixels)
    vae = adapter.components["vae"]
    raw = vae.encode(pixels[:, :, 0]).latent_dist.mode()
    torch.testing.assert_close(latents / vae.config.scaling_factor + vae.config.shift_factor, raw)
    with pytest.raises(ValueError, match="image model"):
        adapter.encode_video(torch.zeros(1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        adapter.encode_video(torch.zeros(1, 3, 1, 40, 32))


def test_flux_variants_and_aitoolkits_single_arch_name(tiny_dirs):
    """ai-toolkit names both variants `arch: flux`: that loads a schnell folder (no guidance embedding)."""
    schnell = _adapter(tiny_dirs("flux_schnell"), "flux")
    assert schnell.arch == "flux_schnell" and not schnell.guidance
    dev = _adapter(tiny_dirs("flux"), "flux")
    mu = 0.5 + (1.15 - 0.5) * (32 * 32 - 256) / (4096 - 256)  # FluxPipeline.calculate_shift at 32x32 tokens
    assert dev.guidance and dev.timestep_shift(torch.Size([1, 16, 64, 64])) == pytest.approx(math.exp(mu))
    assert schnell.timestep_shift(torch.Size([1, 16, 64, 64])) == 1.0
    from cadence.models import ArchMismatchError

    with pytest.raises(ArchMismatchError, match="'flux_schnell'"):
        _adapter(tiny_dirs("flux"), "flux_schnell")


def test_assistant_adapter_is_on_in_training_and_off_when_sampling(tiny_dirs, tmp_path):
    """assistant_lora_path (ai-toolkit's schnell / turbo training adapter): a folder's
    pytorch_lora_weights.safetensors, hooked in frozen at scale 1 once the base is quantized, switched off in
    sampling_mode (samples see the distilled model, as ai-toolkit's -1 merge at sampling gives)."""
    from cadence.networks.formats import LoraTensors, save_lora_file
    from cadence.perf import apply_quantization

    folder = tiny_dirs("flux_schnell")
    gen = torch.Generator().manual_seed(5)
    base = _adapter(folder, "flux_schnell")
    modules = {
        name: LoraTensors(
            torch.randn(2, m.in_features, generator=gen), torch.randn(m.out_features, 2, generator=gen), 8.0
        )
        for name, m in base.transformer("main").named_modules()
        if name.endswith("attn.to_q")
    }
    (tmp_path / "adapter").mkdir()
    save_lora_file(
        tmp_path / "adapter" / "pytorch_lora_weights.safetensors", modules, {}, "diffusers", torch.float32
    )
    cfg = ModelConfig(name_or_path=str(folder), arch="flux", assistant_lora_path=str(tmp_path / "adapter"))
    adapter = load_model_adapter(cfg, CPU, torch.float32)
    apply_quantization(adapter, cfg)
    net = adapter.training_adapters["main"]
    assert not any(p.requires_grad for p in net.parameters()) and set(net.modules_by_name) == set(modules)
    assert all(m.scale == 1.0 for m in net.modules_by_name.values())  # ai-toolkit's alpha = rank
    latents = torch.randn(1, 16, 4, 4, generator=gen)
    text = adapter.pad_text(adapter.encode_prompts([PROMPT]))
    with torch.no_grad():
        trained_on = adapter.predict("main", latents, torch.tensor([0.5]), text, {})
        with adapter.sampling_mode():
            sampled = adapter.predict("main", latents, torch.tensor([0.5]), text, {})
        plain = base.predict("main", latents, torch.tensor([0.5]), text, {})
    assert torch.equal(sampled, plain) and not torch.allclose(trained_on, plain)
    assert net.enabled  # restored after sampling


def test_ui_job_form_offers_every_registered_arch():
    import re
    from pathlib import Path

    import cadence.ui

    page = (Path(cadence.ui.__file__).parent / "static" / "index.html").read_text(encoding="utf-8")
    select = page[page.index('id="f-arch"') : page.index("</select>", page.index('id="f-arch"'))]
    offered = re.findall(r'<option(?: value="([^"]+)")?>([^<]+)</option>', select)
    values = [value or text for value, text in offered]
    assert sorted(values) == sorted(arch_names()) and len(values) == len(set(values))


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("flux_dev_character.yaml", "flux"),
        ("qwen_image_style.yaml", "qwen_image"),
        ("zimage_turbo.yaml", "zimage"),
    ],
)
def test_family_examples_load_with_their_aitoolkit_keys(name, arch):
    from pathlib import Path

    from cadence.config.loader import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "examples" / name)
    assert cfg.model.arch == arch and cfg.train.disable_sampling and cfg.sample.num_frames == 1
    assert (cfg.model.assistant_lora_path is not None) == (arch == "zimage")


def test_tiny_model_command_writes_every_image_arch(tmp_path, capsys):
    """`cadence tiny-model DIR --arch flux|flux_schnell|qwen_image|zimage` (one of them written here; the
    others are the session's tiny folders above, written by the same function)."""
    import argparse

    from cadence.cli import TINY_ARCHS
    from cadence.models.tiny import tiny_model_command

    assert set(IMAGE_ARCHS) <= set(TINY_ARCHS)
    args = argparse.Namespace(dir=str(tmp_path / "zimage"), arch="zimage", seed=0)
    assert tiny_model_command(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "zimage")
    assert detect_arch(tmp_path / "zimage") == "zimage"
    assert diffusers.ZImagePipeline.from_pretrained(str(tmp_path / "zimage")).transformer is not None


def test_block_layout_numbers_every_familys_blocks_in_execution_order():
    from cadence.models.registry import block_layout
    from cadence.networks.magnitude import block_index

    flux = block_layout(
        ["transformer_blocks.1.attn.to_q", "single_transformer_blocks.0.proj_out", "proj_out"]
    )
    assert flux == {
        "transformer_blocks.1.attn.to_q": (1, "attn.to_q"),
        "single_transformer_blocks.0.proj_out": (2, "proj_out"),
    }
    zimage = block_layout(
        ["noise_refiner.0.attention.to_q", "context_refiner.0.attention.to_q", "layers.0.feed_forward.w1"]
    )
    assert [p for p, _ in zimage.values()] == [0, 1, 2]
    wan = ["blocks.0.attn1.to_q", "blocks.7.ffn.net.2", "proj_out"]
    assert {n: p for n, (p, _) in block_layout(wan).items()} == {n: block_index(n) for n in wan[:2]}
