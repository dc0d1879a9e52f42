"""Faults: a streak of non-finite losses stops the run with the last good checkpoint intact."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from cadence.metrics.jsonl import read_metrics
from cadence.train.runner import run_training

from .conftest import job_dict, write_job


def test_nan_streak_stops_run_and_keeps_last_good_checkpoint(
    tiny_i2v: Path, clips: Path, tmp_path: Path, monkeypatch
) -> None:
    """Cache entries that turn to NaN mid-run (a disk or another job corrupting them) make every later loss
    non-finite: the run stops after max_nan_steps and names the checkpoint that is still good."""
    import torch

    from cadence.data import cache as cache_module

    real_load = cache_module.LatentCache.load
    calls = {"n": 0}

    def load(self, item):
        calls["n"] += 1
        if calls["n"] > 3:  # from the 4th batch on, the real entry file on disk holds NaN latents
            path = self.path(item)
            tensors = dict(real_load(self, item))
            tensors["latents"] = torch.full_like(tensors["latents"], float("nan"))
            cache_module._save(path, tensors, self.fingerprint(item))
        return real_load(self, item)

    monkeypatch.setattr(cache_module.LatentCache, "load", load)
    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=50, max_nan_steps=4)
    job["datasets"][0]["cache_latents_to_disk"] = False  # a private cache: the shared one stays intact
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
    latest = max(int(p.name.split("_")[1]) for p in (run / "training_state").iterdir())
    assert f"the last good checkpoint is step {latest}" in log
    tensors = load_file(run / f"job_{good:09d}_high_noise.safetensors")
    assert all(t.isfinite().all() for t in tensors.values())
    assert (run / "training_state" / f"step_{good:09d}").is_dir()


def test_adapter_overflowing_the_save_dtype_is_not_written(
    tiny_i2v: Path, clips: Path, tmp_path: Path, caplog
) -> None:
    """A weight finite in fp32 but beyond fp16's range would be written as inf: the checkpoint is refused, the
    run stops (exit 3) naming the last good one, and that one is untouched."""
    import hashlib

    import torch

    from cadence.config.loader import load_config
    from cadence.train.loop import Trainer
    from cadence.train.setup import build_training

    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=4)
    job["save"].update({"save_every": 2, "dtype": "float16"})
    cfg = load_config(write_job(tmp_path / "job.yaml", job))
    assert run_training(tmp_path / "job.yaml") == 0
    run = tmp_path / "out" / "job"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.glob("*.safetensors")}

    cfg.train.steps = 8
    setup = build_training(cfg)
    assert setup.start_step == 4
    up = next(p for n, p in setup.networks["low_noise"].named_parameters() if n.endswith("up"))
    with torch.no_grad():
        up[0, 0] = 1e6  # diverged: finite in fp32, inf in fp16
    assert Trainer(setup).run() == 3
    log = caplog.text
    assert "overflow to inf in save.dtype float16" in log
    assert "The last good checkpoint is step 4" in log
    assert not list(run.glob("job_00000000[5-8]_*.safetensors")), "no file of a non-finite checkpoint"
    assert sorted(p.name for p in (run / "training_state").iterdir()) == ["step_000000002", "step_000000004"]
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.glob("*.safetensors")}
    assert after == before


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
