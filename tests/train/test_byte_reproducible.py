"""Identical runs write byte-identical LoRA files and training states, so anyone can check "bit-exact
resume" with sha256sum: metadata keys in a stable order, no paths, timestamps or random ids in those bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cadence.train.runner import run_training

from .conftest import job_dict, write_job


def _digests(run: Path) -> dict[str, str]:
    files = [*run.glob("*.safetensors"), *(run / "training_state").rglob("*")]
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(files)
        if p.is_file()
    }


@pytest.mark.slow
def test_two_runs_and_a_resumed_run_write_the_same_bytes(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    def job(folder: str, steps: int) -> Path:
        config = job_dict(tiny_i2v, clips, tmp_path / folder, steps=steps, switch_boundary_every=2)
        config["save"].update({"save_every": 3, "dtype": "float16"})
        return write_job(tmp_path / f"{folder}.yaml", config)

    assert run_training(job("a", 6)) == 0
    assert run_training(job("b", 6)) == 0  # another folder: paths must not enter the bytes
    assert run_training(job("c", 3)) == 0
    assert run_training(job("c", 6)) == 0  # resumed at step 3 with steps raised to 6
    a, b, c = (_digests(tmp_path / name / "job") for name in "abc")
    assert len(a) == 8 and any(name.endswith("state.pt") for name in a)  # 2 steps x (2 LoRA + 2 state files)
    assert a == b
    final = {name: digest for name, digest in a.items() if "000000006" in name}
    assert len(final) == 4 and {name: c[name] for name in final} == final
    # step 3 of the resumed run was written under `steps: 3`: its config fingerprint differs, as it should
