"""train.eval_split holds out whole files: every window of a held-out clip is on the eval side."""

from __future__ import annotations

from pathlib import Path

from cadence.config.loader import load_config
from cadence.data.dataset import build_dataset_index
from cadence.train.setup import _split_eval

from .conftest import job_dict, write_job


def test_windows_of_one_clip_never_straddle_train_and_eval(
    tiny_i2v: Path, clips: Path, tmp_path: Path
) -> None:
    job = job_dict(tiny_i2v, clips, tmp_path / "out", eval_split=0.4)
    job["datasets"][0].update({"frame_extraction": "slide", "frame_stride": 2, "num_frames": 5})
    cfg = load_config(write_job(tmp_path / "job.yaml", job))
    index = build_dataset_index(cfg, 16, 4, 16, cfg.train.seed)
    windows = len(index.train_items)
    assert windows > 5, "the clips must give several windows each"
    eval_items = _split_eval(cfg, index)
    assert eval_items and index.train_items
    held = {item.path for item in eval_items}
    assert held.isdisjoint({item.path for item in index.train_items})
    assert len(eval_items) + len(index.train_items) == windows
    assert len({item.path for item in eval_items}) == 2  # 40% of the 5 files (3 clips, 2 images)
