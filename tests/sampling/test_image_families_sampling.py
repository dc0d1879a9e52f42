"""`cadence sample` on an image family: a model folder and a LoRA file give a PNG (no mp4) with its sidecar, and
the image is the one diffusers' own FluxPipeline makes with the same LoRA loaded through `load_lora_weights`
(same prompt embeddings and seed): Cadence samples at the trained strength."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import torch
from PIL import Image

from cadence.cli import build_parser, resolve_handler
from cadence.config.schema import ModelConfig, NetworkConfig
from cadence.models import load_model_adapter
from cadence.networks.formats import LoraTensors, save_lora_file
from cadence.networks.targeting import select_targets


def test_cadence_sample_on_flux_writes_the_png_diffusers_makes_with_the_lora(tiny_models, tmp_path, capsys):
    folder = tiny_models("flux")
    pipe = diffusers.FluxPipeline.from_pretrained(str(folder))
    gen = torch.Generator().manual_seed(11)
    targets = select_targets(pipe.transformer, NetworkConfig(linear=2, linear_alpha=4), warn=False)
    modules = {
        n: LoraTensors(
            torch.randn(2, m.in_features, generator=gen), torch.randn(m.out_features, 2, generator=gen), 4.0
        )
        for n, m in targets.items()
    }
    lora = tmp_path / "lora.safetensors"
    save_lora_file(lora, modules, {"arch": "flux", "expert": "main"}, "diffusers", torch.float32)
    args = [
        "sample",
        str(folder),
        "--lora",
        str(lora),
        "--prompt",
        "a red car",
        "--out",
        str(tmp_path / "out"),
    ]
    args += [
        "--width",
        "32",
        "--height",
        "48",
        "--steps",
        "2",
        "--seed",
        "5",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
    ]
    assert resolve_handler("sample")(build_parser().parse_args(args)) == 0  # `cadence sample ...` in-process
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["000000000_00.json", "000000000_00.png"]
    sidecar = json.loads((tmp_path / "out" / "000000000_00.json").read_text())
    assert sidecar["arch"] == "flux" and sidecar["motion"] is None and sidecar["num_frames"] == 1
    ours = np.asarray(Image.open(tmp_path / "out" / "000000000_00.png"))

    adapter = load_model_adapter(
        ModelConfig(name_or_path=str(folder), arch="flux"), torch.device("cpu"), torch.float32
    )
    prompt = adapter.pad_text(adapter.encode_prompts(["a red car"]))
    pipe.load_lora_weights(str(lora))
    image = pipe(
        prompt_embeds=prompt["embeds"],
        pooled_prompt_embeds=prompt["pooled"],
        height=48,
        width=32,
        num_inference_steps=2,
        guidance_scale=sidecar["guidance_scale"],
        generator=torch.Generator("cpu").manual_seed(5),
        output_type="np",
    ).images[0]
    reference = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    assert ours.shape == reference.shape == (48, 32, 3)
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1
