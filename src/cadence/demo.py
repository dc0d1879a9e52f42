"""`cadence demo`: the main job end to end on the embedded tiny model and synthetic clips.

Writes a tiny random-weight Wan 2.2 I2V pipeline folder and a small synthetic dataset (real H.264 clips
with moving shapes, plus images), a seed-layout config, validates it, caches latents and text embeddings,
trains one LoRA per expert, runs the motion health analysis on the run, and prints where everything is.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

DEMO_STEPS = 300


def demo_config(root: Path, steps: int) -> dict:
    """A seed-layout (ai-toolkit style) job that a user could also run with `cadence train`."""
    return {
        "job": "extension",
        "config": {
            "name": "demo_motion_lora",
            "process": [
                {
                    "type": "sd_trainer",
                    "training_folder": str(root / "output"),
                    "device": "cpu",
                    "trigger_word": "sks",
                    "network": {"type": "lora", "linear": 8, "linear_alpha": 8},
                    "save": {"dtype": "float16", "save_every": 100, "max_step_saves_to_keep": 3},
                    "datasets": [
                        {
                            "folder_path": str(root / "dataset"),
                            "caption_ext": "txt",
                            "caption_dropout_rate": 0.05,
                            "resolution": [64],
                            "num_frames": 9,
                            "shrink_video_to_frames": True,
                            "do_i2v": True,
                            "cache_latents_to_disk": True,
                        }
                    ],
                    "train": {
                        "steps": steps,
                        "batch_size": 1,
                        "lr": 5e-4,
                        "optimizer": "adamw",
                        "dtype": "fp32",
                        "gradient_checkpointing": False,
                        "timestep_type": "sigmoid",
                        "switch_boundary_every": 10,
                        "cache_text_embeddings": True,
                        "disable_sampling": True,
                        "optimizer_params": {"high_noise_lr": 1e-3, "low_noise_lr": 2.5e-4},
                    },
                    "model": {
                        "name_or_path": str(root / "tiny_wan22_i2v"),
                        "arch": "wan22_14b_i2v",
                        "model_kwargs": {"train_high_noise": True, "train_low_noise": True},
                    },
                    "logging": {"tensorboard": True},
                }
            ],
        },
    }


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def demo_command(args: argparse.Namespace) -> int:
    from cadence.config.loader import load_config
    from cadence.data.synthetic import write_synthetic_dataset
    from cadence.models.tiny import write_tiny_model
    from cadence.train.runner import run_training

    root = Path(args.out).resolve()
    steps = args.steps or DEMO_STEPS
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "tiny_wan22_i2v"
    if not (model_dir / "model_index.json").exists():
        write_tiny_model(model_dir, "wan22_14b_i2v", seed=0)
    _say(f"[1/4] tiny Wan 2.2 I2V pipeline (Diffusers folder): {model_dir}")
    dataset = root / "dataset"
    if not dataset.exists():
        write_synthetic_dataset(dataset)
    _say(f"[2/4] synthetic dataset (H.264 clips + images, captions): {dataset}")
    config_path = root / "demo.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(root, steps), sort_keys=False))
    cfg = load_config(config_path)
    _say(f"[3/4] config validated: {config_path}")
    _say(f"[4/4] training {steps} steps (caches first), then the motion health analysis ...")
    code = run_training(config_path)
    if code != 0:
        _say(f"training failed with exit code {code}; see {cfg.run_dir / 'log.txt'}")
        return code
    run_dir = cfg.run_dir
    from cadence.tools.analyze import analyze_run, format_report, write_outputs

    report = analyze_run(run_dir, preset="motion")
    _say(format_report(report, write_outputs(report)))
    _say("done.")
    _say(f"  LoRA files:   {run_dir}/{cfg.name}_*_high_noise.safetensors, *_low_noise.safetensors")
    _say(f"  metrics:      {run_dir / f'metrics_{cfg.name}.jsonl'}")
    _say(f"  TensorBoard:  tensorboard --logdir {run_dir / 'tensorboard'}")
    _say(f"  log:          {run_dir / 'log.txt'}")
    _say(f"  latent cache: {dataset / '_cadence_cache'}")
    return 0
