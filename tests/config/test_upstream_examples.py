"""ai-toolkit's own Wan example configs run in Cadence with only their paths changed.

data/upstream/ holds, with the same sections, keys and values, ostris/ai-toolkit 27a03a91
config/examples/train_lora_wan21_14b_24gb.yaml, train_lora_wan21_1b_24gb.yaml, train_lora_wan22_14b_24gb.yaml and
the relaxis fork 64b3e52 config_examples/i2v_lora_alpha_scheduling.yaml. Each validates with
`cadence validate --config-only` once its folders, model and files point at local ones; two of them train a few
steps on the tiny model (sizes and step counts shrunk, and the two settings this CPU machine cannot run,
adamw8bit and flash attention, swapped for their equivalents: that is the machine's problem, reported by a
full `cadence validate` in the same report as everything else).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file

from cadence.config.loader import load_config
from cadence.metrics.jsonl import read_metrics

UPSTREAM = Path(__file__).parent / "data" / "upstream"
EXAMPLES = {
    "train_lora_wan21_14b_24gb.yaml": "wan21",
    "train_lora_wan21_1b_24gb.yaml": "wan21",
    "train_lora_wan22_14b_24gb.yaml": "wan22_14b",
    "i2v_lora_alpha_scheduling.yaml": "wan22_14b_i2v",
}


def _recovery_adapter(model: Path, path: Path) -> Path:
    """ai-toolkit's accuracy-recovery layout for the tiny model: diffusion_model.transformer_{1,2}.<Wan name>
    .lora_A/B of each quantizable Linear (here the SVD of its uint4 error), so `qtype: uint4|FILE` loads."""
    from cadence.config.schema import ModelConfig
    from cadence.models import wan_memory
    from cadence.models.registry import load_model_adapter
    from cadence.networks import keymap
    from cadence.perf.uint4 import dequantize_uint4, quantize_uint4

    adapter = load_model_adapter(
        ModelConfig(name_or_path=str(model), arch="wan22_14b_i2v"), torch.device("cpu"), torch.float32
    )
    tensors = {}
    for index, spec in enumerate(adapter.experts, start=1):
        for name, linear in wan_memory.quantizable_linears(adapter.transformer(spec.name)).items():
            error = linear.weight.detach() - dequantize_uint4(
                *quantize_uint4(linear.weight.detach()), torch.float32
            )
            u, s, vh = torch.linalg.svd(error, full_matrices=False)
            stem = f"diffusion_model.transformer_{index}.{keymap.to_original(name)}"
            tensors[f"{stem}.lora_A.weight"] = (vh[:8] * s[:8, None]).contiguous()
            tensors[f"{stem}.lora_B.weight"] = u[:, :8].contiguous()
    save_file(tensors, str(path))
    return path


def _localized(name: str, tiny_models, clips: Path, tmp: Path) -> dict[str, Any]:
    """The upstream example with its paths pointing here: output folder, dataset folder, model folder, the
    recovery adapter file after `uint4|`, and sample control images."""
    data = yaml.safe_load((UPSTREAM / name).read_text(encoding="utf-8"))
    process = data["config"]["process"][0]
    model = tiny_models(EXAMPLES[name])
    process["training_folder"] = str(tmp / "output")
    for dataset in process["datasets"]:
        dataset["folder_path"] = str(clips)
    process["model"]["name_or_path"] = str(model)
    qtype = process["model"].get("qtype", "")
    if "|" in qtype and EXAMPLES[name] == "wan22_14b_i2v":
        process["model"]["qtype"] = f"uint4|{_recovery_adapter(model, tmp / 'ara.safetensors')}"
    elif "|" in qtype:
        process["model"]["qtype"] = f"uint4|{tmp / 'ara.safetensors'}"  # validated, never loaded
    for sample in process.get("sample", {}).get("samples", []):
        if "ctrl_img" in sample:
            from PIL import Image

            Image.new("RGB", (64, 48), (90, 120, 30)).save(tmp / "first.png")
            sample["ctrl_img"] = str(tmp / "first.png")
    return data


def _write(data: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def localized(tiny_models, clips, tmp_path_factory):
    folder = tmp_path_factory.mktemp("upstream")
    return {name: _localized(name, tiny_models, clips, folder) for name in EXAMPLES}, folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from cadence.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "clips", n_videos=2, n_images=1, width=48, height=32, num_frames=9
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_upstream_wan_example_validates_with_its_paths_changed(name, localized, capsys, caplog) -> None:
    from cadence.config.validate import validate_command

    configs, folder = localized
    data = configs[name]
    path = _write(data, folder / name)
    code = validate_command(argparse.Namespace(config=str(path), config_only=True, dataset_config=None))
    out, err = capsys.readouterr()
    assert code == 0, f"{name}:\n{err}"
    resolved = yaml.safe_load(out)
    upstream = data["config"]["process"][0]
    assert (
        resolved["train"]["steps"] == upstream["train"]["steps"]
        and resolved["name"] == data["config"]["name"]
    )
    if name.startswith("train_lora_wan21"):
        # 40 sample frames: rounded to 41 as diffusers' Wan pipelines round, with a warning
        assert resolved["sample"]["num_frames"] == 41 and "40 frames is not of the form 4k+1" in caplog.text
        assert resolved["train"]["ema_config"]["use_ema"] is True  # in-training EMA (item 1)
    if name == "train_lora_wan21_14b_24gb.yaml":
        assert resolved["train"]["unload_text_encoder"] is True
        assert "every item trains on the trigger word 'p3r5on'" in caplog.text
        assert "0.05 has no effect with train.unload_text_encoder" in caplog.text
    if name == "train_lora_wan22_14b_24gb.yaml":
        assert resolved["model"]["qtype"].startswith("uint4|") and resolved["train"]["cache_text_embeddings"]
        assert resolved["train"]["switch_boundary_every"] == 10
    if name == "i2v_lora_alpha_scheduling.yaml":
        # the fork's conv phases, printed before training: they drive the Linear adapters on Wan
        assert "applied to the trained Linear adapters instead (replacing the fixed linear_alpha 16)" in out
        assert "# alpha phases [high_noise]: Linear adapters foundation 8 -> balance 14 -> emphasis 20" in out
        assert resolved["train"]["ema_config"]["use_ema"] is True


@pytest.mark.slow
def test_full_validate_names_what_this_machine_lacks_in_one_report(localized) -> None:
    configs, folder = localized
    data = copy.deepcopy(configs["i2v_lora_alpha_scheduling.yaml"])
    data["config"]["process"][0]["train"]["optimizer_params"]["lr_bumb"] = 1e-6  # and a config error beside
    from cadence.config.errors import ConfigError
    from cadence.config.validate import check_config_file

    with pytest.raises(ConfigError) as err:  # what `cadence validate` prints, checked in this process
        check_config_file(_write(data, folder / "fork_machine.yaml"), machine=True)
    report = str(err.value)
    assert "train.optimizer_params.lr_bumb" in report and "did you mean 'lr_bump'?" in report
    if not torch.cuda.is_available():
        assert "config.process[0].device: 'cuda' was asked for but no CUDA GPU is visible" in report
        assert "config.process[0].train.attention_backend: 'flash'" in report


def _shrink(process: dict[str, Any], steps: int) -> None:
    """Tiny sizes and a few steps, the rest as published."""
    process["device"] = "cpu"
    for dataset in process["datasets"]:
        dataset["resolution"] = [32]
        dataset.pop("max_pixels_per_frame", None)
        if dataset.get("num_frames", 1) > 1:
            dataset["num_frames"] = 5
    train = process["train"]
    train.update(steps=steps, dtype="fp32")
    if train.get("switch_boundary_every", 1) > 1:
        train["switch_boundary_every"] = 2
    if train.get("optimizer") == "adamw8bit":  # bitsandbytes' 8-bit AdamW is CUDA-only: the same maths
        train["optimizer"] = "adamw"
    if train.get("attention_backend") == "flash":  # flash-attn needs CUDA: PyTorch SDPA here
        train["attention_backend"] = "native"
    process["save"]["save_every"] = steps
    sample = process["sample"]
    sample.update(width=32, height=32, sample_steps=2, sample_every=10 * steps)


@pytest.mark.slow
def test_wan21_trigger_word_example_trains_on_the_trigger_word_with_ema(localized, tmp_path, caplog) -> None:
    from cadence.train.runner import run_training

    data = copy.deepcopy(localized[0]["train_lora_wan21_14b_24gb.yaml"])
    process = data["config"]["process"][0]
    process["training_folder"] = str(tmp_path / "out")
    _shrink(process, 4)
    path = _write(data, tmp_path / "wan21.yaml")
    assert run_training(path) == 0
    run = tmp_path / "out" / "my_first_wan21_14b_lora_v1"
    rows = read_metrics(run / "metrics_my_first_wan21_14b_lora_v1.jsonl")
    assert len(rows) == 4 and all(r["loss"] is not None for r in rows)
    assert (run / "my_first_wan21_14b_lora_v1_000000004.safetensors").exists()
    # one text embedding for training (the trigger word) plus the sample prompt: captions were not encoded
    texts = list((run / "text_cache").glob("*.safetensors"))
    assert len(texts) <= 3, texts
    assert "every item trains on the trigger word 'p3r5on'" in (run / "log.txt").read_text()
    assert load_config(path).train.ema_config.use_ema
    from safetensors import safe_open

    with safe_open(str(run / "my_first_wan21_14b_lora_v1_000000004.safetensors"), "pt") as handle:
        assert handle.metadata()["weights"] == "ema"  # the saved file holds the average, as in ai-toolkit


@pytest.mark.slow
def test_fork_i2v_alpha_example_trains_with_automagic_and_its_phases(localized, tmp_path) -> None:
    from cadence.networks.formats import load_lora_file
    from cadence.train.runner import run_training

    data = copy.deepcopy(localized[0]["i2v_lora_alpha_scheduling.yaml"])
    process = data["config"]["process"][0]
    process["training_folder"] = str(tmp_path / "out")
    _shrink(process, 4)
    path = _write(data, tmp_path / "fork.yaml")
    assert run_training(path) == 0
    run = tmp_path / "out" / "video_lora_training"
    rows = read_metrics(run / "metrics_video_lora_training.jsonl")
    assert len(rows) == 4 and {r["expert"] for r in rows} == {"high_noise", "low_noise"}
    assert {r["linear_alpha"] for r in rows} == {
        8.0
    }  # foundation phase of the conv list, on the Linear adapters
    for expert in ("high_noise", "low_noise"):
        lora = load_lora_file(run / f"video_lora_training_000000004_{expert}.safetensors")
        assert {t.alpha for t in lora.modules.values()} == {8.0}


@pytest.mark.slow
def test_weighted_timesteps_train_with_ai_toolkits_loss_weights(tiny_models, clips, tmp_path) -> None:
    """timestep_type weighted (the ai-toolkit UI's default for Wan 2.1 I2V): the same timesteps as linear
    from the same seed, each step's loss multiplied by the table weight at its t (batch of one: exactly)."""
    from cadence.schedule.timesteps import TimestepSampler
    from cadence.train.runner import run_training

    def run(kind: str) -> list[dict[str, Any]]:
        job = {
            "name": kind,
            "training_folder": str(tmp_path / "out"),
            "device": "cpu",
            "network": {"linear": 4, "linear_alpha": 4},
            "save": {"save_every": 100},
            "datasets": [{"folder_path": str(clips), "resolution": [32]}],
            "train": {"steps": 3, "lr": 1e-3, "timestep_type": kind, "disable_sampling": True, "seed": 3},
            "model": {"name_or_path": str(tiny_models("wan21")), "arch": "wan21"},
            "logging": {"tensorboard": False},
        }
        assert run_training(_write(job, tmp_path / f"{kind}.yaml")) == 0
        return read_metrics(tmp_path / "out" / kind / f"metrics_{kind}.jsonl")

    linear, weighted = run("linear"), run("weighted")
    assert [r["t"] for r in weighted] == [r["t"] for r in linear]
    weights = TimestepSampler("weighted").loss_weights(torch.tensor([r["t"] for r in weighted]))
    first = (
        weighted[0]["loss"] / linear[0]["loss"]
    )  # step 1: same weights, same batch, only the factor differs
    assert first == pytest.approx(float(weights[0]), rel=1e-4)
