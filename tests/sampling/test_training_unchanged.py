"""Sampling on vs off: bit-identical training (losses and LoRA tensors), also across a resume.

Needs the training loop to call `TrainingSampler.due/run` (integration in cadence.train). The network uses
dropout, which draws from torch's global RNG: if sampling shifted that stream, the losses would differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from cadence.data.synthetic import write_synthetic_dataset
from cadence.metrics.jsonl import read_metrics
from cadence.train.runner import run_training

from .conftest import write_job

VOLATILE = {"timestamp", "step_seconds"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "clips", n_videos=2, n_images=2, width=48, height=32, num_frames=9
    )


def _job(model: Path, data: Path, out: Path, ctrl: Path, steps: int, sampling: bool) -> dict:
    return {
        "name": "job",
        "training_folder": str(out),
        "device": "cpu",
        "trigger_word": "sks",
        "network": {"type": "lora", "linear": 4, "linear_alpha": 2, "dropout": 0.2},
        "save": {"save_every": 4, "max_step_saves_to_keep": 10, "dtype": "float32"},
        "datasets": [
            {
                "folder_path": str(data),
                "resolution": [32],
                "num_frames": 5,
                "caption_dropout_rate": 0.3,
                "cache_latents_to_disk": True,
            }
        ],
        "train": {
            "steps": steps,
            "lr": 1e-3,
            "dtype": "fp32",
            "gradient_checkpointing": False,
            "switch_boundary_every": 2,
            "disable_sampling": not sampling,
            "seed": 7,
        },
        "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        "sample": {
            "sample_every": 3,
            "width": 32,
            "height": 32,
            "num_frames": 5,
            "sample_steps": 2,
            "guidance_scale": 3.0,
            "samples": [{"prompt": "a [trigger] clip", "ctrl_img": str(ctrl)}],
        },
        "logging": {"tensorboard": False},
    }


def _metrics(run: Path) -> list[dict]:
    rows = read_metrics(run / "metrics_job.jsonl")
    return [{k: v for k, v in r.items() if not _volatile(k)} for r in rows]


def _volatile(key: str) -> bool:
    """Wall-clock fields (and any sampling timing the loop may log) differ between identical runs."""
    return key in VOLATILE or key.startswith("sample") or "time" in key or key.endswith(("_s", "seconds"))


def _tensors(run: Path, step: int) -> dict[str, dict]:
    return {e: load_file(run / f"job_{step:09d}_{e}.safetensors") for e in ("high_noise", "low_noise")}


def _same(a: dict[str, dict], b: dict[str, dict]) -> None:
    for expert in a:
        assert a[expert].keys() == b[expert].keys()
        for key in a[expert]:
            assert a[expert][key].equal(b[expert][key]), f"{expert} {key} differs"


def _samples(run: Path) -> list[str]:
    folder = run / "samples"
    return sorted(p.name for p in folder.glob("*.mp4")) if folder.is_dir() else []


def test_sampling_on_trains_bit_identically_and_resumes_exactly(tiny_i2v, clips, ctrl_png, tmp_path):
    off = write_job(tmp_path / "off.yaml", _job(tiny_i2v, clips, tmp_path / "off", ctrl_png, 8, False))
    on = write_job(tmp_path / "on.yaml", _job(tiny_i2v, clips, tmp_path / "on", ctrl_png, 8, True))
    assert run_training(off) == 0 and run_training(on) == 0
    run_off, run_on = tmp_path / "off" / "job", tmp_path / "on" / "job"
    assert _samples(run_off) == []
    assert _samples(run_on) == ["000000000_00.mp4", "000000003_00.mp4", "000000006_00.mp4"]
    assert _metrics(run_off) == _metrics(run_on)
    _same(_tensors(run_off, 8), _tensors(run_on, 8))

    # with sampling on, stop at 4 and resume to 8: still the same run
    half = write_job(tmp_path / "r.yaml", _job(tiny_i2v, clips, tmp_path / "r", ctrl_png, 4, True))
    assert run_training(half) == 0
    full = write_job(tmp_path / "r.yaml", _job(tiny_i2v, clips, tmp_path / "r", ctrl_png, 8, True))
    assert run_training(full) == 0
    run_r = tmp_path / "r" / "job"
    assert _metrics(run_r) == _metrics(run_on)
    _same(_tensors(run_r, 8), _tensors(run_on, 8))
    assert _samples(run_r) == _samples(run_on)


def test_resume_after_a_kill_while_sampling_the_checkpoint_step(tiny_i2v, clips, ctrl_png, tmp_path):
    """A kill while writing the checkpoint step's samples: the resumed run writes them again (same
    weights, same pictures), removes the killed writer's temp file and a pruned step's orphaned files."""
    from PIL import Image

    def job(out: Path, steps: int) -> dict:
        spec = _job(tiny_i2v, clips, out, ctrl_png, steps, True)
        spec["sample"]["sample_every"] = 4
        spec["sample"]["skip_first_sample"] = True
        spec["save"]["max_step_saves_to_keep"] = 1
        return spec

    straight = write_job(tmp_path / "a.yaml", job(tmp_path / "a", 8))
    assert run_training(straight) == 0
    assert run_training(write_job(tmp_path / "b.yaml", job(tmp_path / "b", 4))) == 0
    run_a, run_b = tmp_path / "a" / "job", tmp_path / "b" / "job"
    (run_b / "samples" / "000000004_00.webp").unlink()  # what the kill left: some files of the step
    stale = run_b / "samples" / ".000000004_00.webp.k1ll3d.tmp"
    stale.write_bytes(b"half a webp")
    orphans = [run_b / f"job_000000002_{e}.safetensors" for e in ("high_noise", "low_noise")]
    backup = run_b / "job_000000002_high_noise_backup.safetensors"  # the user's own copy: never pruned
    backup.write_bytes(b"mine")
    for orphan, e in zip(orphans, ("high_noise", "low_noise"), strict=True):  # a prune the kill interrupted
        orphan.write_bytes((run_b / f"job_000000004_{e}.safetensors").read_bytes())
    assert run_training(write_job(tmp_path / "b.yaml", job(tmp_path / "b", 8))) == 0
    assert sorted(p.name for p in (run_b / "samples").iterdir()) == sorted(
        p.name for p in (run_a / "samples").iterdir()
    )
    png = "000000004_00.png"
    assert Image.open(run_b / "samples" / png).tobytes() == Image.open(run_a / "samples" / png).tobytes()
    assert not stale.exists() and not any(o.exists() for o in orphans) and backup.exists()
    _same(_tensors(run_b, 8), _tensors(run_a, 8))
