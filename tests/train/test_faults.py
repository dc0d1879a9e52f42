"""Faults: a streak of non-finite losses stops the run with the last good checkpoint intact."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from cadence.metrics.jsonl import read_metrics
from cadence.train.runner import run_training

from .conftest import job_dict, write_job


def test_nan_streak_stops_run_and_keeps_last_good_checkpoint(
    tiny_i2v: Path, clips: Path, tmp_path: Path
) -> None:
    # lr 1e30: AdamW's first update makes the up-projections ~1e30, so every later loss overflows to inf/nan.
    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=50, lr=1e30, max_nan_steps=4)
    job["save"]["save_every"] = 1
    code = run_training(write_job(tmp_path / "job.yaml", job))
    assert code == 3
    run = tmp_path / "out" / "job"
    rows = read_metrics(run / "metrics_job.jsonl")
    assert rows[0]["loss"] is not None
    assert [row["loss"] for row in rows[-4:]] == [None] * 4, (
        "the run stops at the 4th non-finite step in a row"
    )
    skipped = [row for row in rows if row["loss"] is None]
    assert skipped[-1]["nan_skipped"] == len(skipped)
    log = (run / "log.txt").read_text()
    assert "non-finite losses in a row" in log and "train.max_nan_steps=4" in log
    good = max(row["step"] for row in rows if row["loss"] is not None)
    tensors = load_file(run / f"job_{good:09d}_high_noise.safetensors")
    assert all(t.isfinite().all() for t in tensors.values())
    assert (run / "training_state" / f"step_{good:09d}").is_dir()


def test_cadence_device_overrides_the_config_device(monkeypatch) -> None:
    import pytest as _pytest
    import torch

    from cadence.train.precision import resolve_device

    monkeypatch.setenv("CADENCE_DEVICE", "cpu")
    assert resolve_device("cuda:1") == torch.device("cpu")
    monkeypatch.delenv("CADENCE_DEVICE")
    if not torch.cuda.is_available():
        with _pytest.raises(ValueError, match="no CUDA GPU is visible"):
            resolve_device("cuda")


@pytest.mark.slow
def test_cache_entry_vanishing_mid_run_skips_a_batch(
    tiny_i2v: Path, clips: Path, tmp_path: Path, monkeypatch
) -> None:
    """A latent entry deleted while the run trains (another job rewrote the cache) costs one batch, counted in
    the log, not the run."""
    from cadence.data.cache import LatentCache

    real_load = LatentCache.load
    deleted: list[Path] = []

    def load(self, item):
        if not deleted and item.path.name == "clip_00.mp4":
            path = self.path(item)
            path.unlink()  # a real miss: the file is gone
            deleted.append(path)
        return real_load(self, item)

    monkeypatch.setattr(LatentCache, "load", load)
    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=6)
    job["datasets"][0]["cache_latents_to_disk"] = False  # a private cache, so the shared one is untouched
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    assert deleted
    log = (tmp_path / "out" / "job" / "log.txt").read_text()
    assert "skipping a batch (1 so far)" in log and "clip_00.mp4" in log
    assert len(read_metrics(tmp_path / "out" / "job" / "metrics_job.jsonl")) == 6
