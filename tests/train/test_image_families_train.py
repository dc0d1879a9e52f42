"""Each image family trains its tiny model from an ai-toolkit-layout config (the published examples, paths and
sizes changed): the fixed-timestep eval loss falls, a run stopped halfway and resumed ends bit-identical to an
uninterrupted one, samples are PNG images, and the saved LoRA loads in the family's diffusers pipeline
(`load_lora_weights`) at the trained strength (fused delta = up @ down * alpha / rank).

data/upstream/ holds ostris/ai-toolkit 27a03a91 config/examples/train_lora_flux_24gb.yaml,
train_lora_flux_schnell_24gb.yaml and train_lora_qwen_image_24gb.yaml with their keys and values (comments
dropped); data/zimage_aitoolkit_ui.yaml is the Qwen-Image example set to ai-toolkit's UI defaults for `zimage`
(there is no Z-Image example file upstream).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
import yaml

from cadence.metrics.jsonl import read_metrics
from cadence.networks.formats import LoraTensors, load_lora_file, save_lora_file
from cadence.train.runner import run_training

DATA = Path(__file__).parent / "data"
CASES = {
    "flux": ("upstream/train_lora_flux_24gb.yaml", "FluxPipeline"),
    "flux_schnell": ("upstream/train_lora_flux_schnell_24gb.yaml", "FluxPipeline"),
    "qwen_image": ("upstream/train_lora_qwen_image_24gb.yaml", "QwenImagePipeline"),
    "zimage": ("zimage_aitoolkit_ui.yaml", "ZImagePipeline"),
}
# Cadence features beside the published keys, one family each: alpha phases, LoRA+
PHASES = {"warm": {"alpha": 8, "min_steps": 4}, "main": {"alpha": 16}}  # leaving warm needs 20 steps of trend
EXTRA = {
    "qwen_image": {"network": {"alpha_schedule": {"enabled": True, "alpha_phases": PHASES, "window": 20}}},
    "zimage": {"network": {"network_kwargs": {"loraplus_lr_ratio": 4}}},
}
STEPS = 10


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from cadence.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("imgs"), n_videos=0, n_images=3, width=48, height=32
    )


def _assistant_adapter(model: Path, folder: Path) -> Path:
    """ai-toolkit's training-adapter layout (diffusers keys, alpha = rank) for the tiny schnell transformer."""
    transformer = diffusers.FluxTransformer2DModel.from_pretrained(str(model / "transformer"))
    gen = torch.Generator().manual_seed(3)
    modules = {
        name: LoraTensors(
            torch.randn(2, m.in_features, generator=gen) * 0.3,
            torch.randn(m.out_features, 2, generator=gen) * 0.3,
            2.0,
        )
        for name, m in transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and name.startswith("single_transformer_blocks.0.attn.to_")
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_lora_file(folder / "pytorch_lora_weights.safetensors", modules, {}, "diffusers", torch.float32)
    return folder


def _config(arch: str, model: Path, images: Path, out: Path, steps: int) -> dict[str, Any]:
    """The upstream config with local paths, tiny sizes, an eval set and a few steps (fp32, and plain AdamW:
    bitsandbytes' 8-bit AdamW is CUDA-only, the same maths). Its quantize/qtype settings stay as published,
    except Qwen-Image's uint3 + recovery adapter (refused: not implemented), which becomes qfloat8."""
    data = yaml.safe_load((DATA / CASES[arch][0]).read_text(encoding="utf-8"))
    process = data["config"]["process"][0]
    process.update(training_folder=str(out), device="cpu", trigger_word="sks")
    dataset = process["datasets"][0]
    dataset.update(folder_path=str(images), resolution=[32])
    process["datasets"].append({**copy.deepcopy(dataset), "is_eval": True, "caption_dropout_rate": 0.0})
    process["model"]["name_or_path"] = str(model)
    if "|" in process["model"].get("qtype", ""):
        process["model"]["qtype"] = "qfloat8"
    if "assistant_lora_path" in process["model"]:
        process["model"]["assistant_lora_path"] = str(_assistant_adapter(model, out.parent / "assistant"))
    train = process["train"]
    train.update(steps=steps, dtype="fp32", optimizer="adamw", lr=2e-3, eval_every=5, seed=3)
    train.pop("ema_config", None)  # the EMA's own tests cover it; here the trained weights are compared
    process["save"].update(save_every=5, dtype="float32")
    process["sample"].update(width=32, height=32, sample_steps=2, sample_every=1000)
    process["sample"]["prompts"] = process["sample"]["prompts"][:1]
    for section, values in EXTRA.get(arch, {}).items():
        process[section].update(values)
    return data


def _run(arch: str, tiny_models, images: Path, out: Path, steps: int) -> Path:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(_config(arch, tiny_models(arch), images, out, steps), sort_keys=False))
    assert run_training(path) == 0
    return next(p for p in out.iterdir() if p.is_dir())


def _lora(run: Path, step: int) -> Path:
    return next(run.glob(f"*_{step:09d}.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(CASES))
def test_trains_from_the_aitoolkit_config_resumes_exactly_and_loads_in_diffusers(
    arch, tiny_models, images, tmp_path
):
    run = _run(arch, tiny_models, images, tmp_path / "full", STEPS)
    rows = read_metrics(run / f"metrics_{run.name}.jsonl")
    evals = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
    assert len(rows) == STEPS and len(evals) == 2 and evals[-1] < evals[0], evals
    assert rows[-1]["gradient_stability"] is not None and rows[-1]["loss_ema_10"] is not None  # health fields
    if "alpha_schedule" in EXTRA.get(arch, {}).get("network", {}):
        # the phase's alpha, not network.linear_alpha (16), drives the adapters and is what the file stores
        assert [r["linear_alpha"] for r in rows] == [8.0] * STEPS and rows[-1]["phase"] == "warm"
        assert {t.alpha for t in load_lora_file(_lora(run, STEPS)).modules.values()} == {8.0}
    assert sorted(p.suffix for p in (run / "samples").iterdir()) == [".json", ".png"]  # the step-0 image

    half = _run(arch, tiny_models, images, tmp_path / "resumed", STEPS // 2)
    _run(arch, tiny_models, images, tmp_path / "resumed", STEPS)  # the same run folder continues
    full, resumed = load_lora_file(_lora(run, STEPS)), load_lora_file(_lora(half, STEPS))
    assert full.modules.keys() == resumed.modules.keys()
    for name, t in full.modules.items():
        for key, value in t.tensors.items():
            assert torch.equal(value, resumed.modules[name].tensors[key]), (name, key)

    _loads_at_trained_strength(arch, tiny_models(arch), full)


def _loads_at_trained_strength(arch: str, model: Path, lora) -> None:
    """The file in the diffusers layout (`cadence convert --to diffusers` writes the same) through the family's
    pipeline: each fused weight moved by exactly the trained delta."""
    path = model.parent / f"{arch}_lora_diffusers.safetensors"
    save_lora_file(path, lora.modules, lora.metadata, "diffusers", torch.float32)
    pipe = getattr(diffusers, CASES[arch][1]).from_pretrained(str(model))
    before = {n: m.weight.detach().clone() for n, m in pipe.transformer.named_modules() if n in lora.modules}
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=1.0)
    modules = dict(pipe.transformer.named_modules())
    for name, t in lora.modules.items():
        delta = modules[name].weight.detach() - before[name]
        torch.testing.assert_close(delta, t.diff_weight().to(delta), rtol=1e-4, atol=1e-6)
