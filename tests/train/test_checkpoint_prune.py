"""Pruning removes exactly the files a save wrote, and only outside the kept window."""

from __future__ import annotations

from pathlib import Path

import torch

from cadence.train.checkpoint import CheckpointManager, RunPaths

LABELS = ("high_noise", "low_noise")


def _save(manager: CheckpointManager, step: int) -> None:
    outputs = {
        manager.paths.lora_file(step, label): (lambda tmp: tmp.write_bytes(b"lora")) for label in LABELS
    }
    manager.save(step, outputs, {"high_noise::w": torch.zeros(2)}, {"step": step})


def test_prune_spares_user_files_and_the_kept_window(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run", "job")
    paths.run_dir.mkdir()
    manager = CheckpointManager(paths, keep=2, labels=LABELS)
    backup = paths.run_dir / "job_000000001_high_noise_backup.safetensors"
    backup.write_bytes(b"mine")
    for step in (1, 2, 3):
        _save(manager, step)
    assert manager.complete_steps() == [2, 3]
    assert not paths.lora_file(1, "high_noise").exists() and backup.exists()
    # files without a state: a pruned step (older than the kept window [2, 3]) goes; a newer one (its save
    # was cut short, the resumed run writes it again) stays
    for step in (0, 5):
        for label in LABELS:
            paths.lora_file(step, label).write_bytes(b"lora")
    manager.clean_leftovers()
    assert not paths.lora_file(0, "low_noise").exists() and not paths.lora_file(0, "high_noise").exists()
    assert paths.lora_file(5, "low_noise").exists()
    # with fewer checkpoints than `keep`, nothing would have been pruned: files without a state stay
    roomy = CheckpointManager(paths, keep=5, labels=LABELS)
    paths.lora_file(0, "low_noise").write_bytes(b"lora")
    roomy.clean_leftovers()
    assert paths.lora_file(0, "low_noise").exists() and backup.exists()
