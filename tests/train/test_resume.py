"""Resume is exact: N steps in one run equal N/2 steps, stop, resume — bit-identical."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cadence.metrics.jsonl import read_metrics
from cadence.train.checkpoint import CheckpointManager, RunPaths
from cadence.train.runner import run_training

from .conftest import job_dict, write_job

# measurements of the machine, not of training (peak_memory_gb is 0 on the CPU, allocator-dependent on CUDA)
VOLATILE = {"timestamp", "step_time_s", "data_time_s", "samples_per_s", "peak_memory_gb"}


def _metrics(run: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k not in VOLATILE} for row in read_metrics(run / "metrics_job.jsonl")
    ]


def _lora_files(run: Path, step: int) -> dict[str, dict]:
    return {
        expert: load_file(run / f"job_{step:09d}_{expert}.safetensors")
        for expert in ("high_noise", "low_noise")
    }


def _spawn_train(config: Path, stderr: int) -> subprocess.Popen:
    """`cadence train` in its own process group, so signals reach it as they would from a terminal."""
    return subprocess.Popen(
        [sys.executable, "-m", "cadence.cli", "train", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )


def _assert_same_tensors(a: dict[str, dict], b: dict[str, dict]) -> None:
    for expert in a:
        assert a[expert].keys() == b[expert].keys()
        for key in a[expert]:
            assert a[expert][key].equal(b[expert][key]), f"{expert} {key} differs"


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "adamw_schedulefree"])
def test_stop_inside_expert_block_then_resume_is_bit_identical(
    tiny_i2v: Path, clips: Path, tmp_path: Path, optimizer: str
) -> None:
    # schedule-free swaps to averaged weights for every save: that swap must leave training untouched
    extra = {"steps": 14, "gradient_accumulation": 2, "optimizer": optimizer}
    straight = write_job(tmp_path / "a.yaml", job_dict(tiny_i2v, clips, tmp_path / "a", **extra))
    assert run_training(straight) == 0

    # 7 is inside an expert block (switch every 3): the router must resume mid-block.
    half = job_dict(tiny_i2v, clips, tmp_path / "b", **{**extra, "steps": 7})
    assert run_training(write_job(tmp_path / "b.yaml", half)) == 0
    full = job_dict(tiny_i2v, clips, tmp_path / "b", **extra)
    assert run_training(write_job(tmp_path / "b.yaml", full)) == 0

    run_a, run_b = tmp_path / "a" / "job", tmp_path / "b" / "job"
    rows_a, rows_b = _metrics(run_a), _metrics(run_b)
    assert [r["step"] for r in rows_b] == list(range(1, 15))
    assert [r["expert"] for r in rows_a] == [r["expert"] for r in rows_b]
    assert [r["expert"] for r in rows_a][:7] == ["high_noise"] * 3 + ["low_noise"] * 3 + ["high_noise"]
    assert rows_a == rows_b
    _assert_same_tensors(_lora_files(run_a, 14), _lora_files(run_b, 14))


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted_run(
    tiny_i2v: Path, clips: Path, tmp_path: Path, reap_sessions
) -> None:
    steps = 40
    straight = write_job(tmp_path / "a.yaml", job_dict(tiny_i2v, clips, tmp_path / "a", steps=steps))
    assert run_training(straight) == 0

    job = job_dict(tiny_i2v, clips, tmp_path / "b", steps=steps)
    job["save"]["save_every"] = 1  # a save at every step, so the kill very likely lands inside one
    job["save"]["max_step_saves_to_keep"] = 2
    config = write_job(tmp_path / "b.yaml", job)
    proc = _spawn_train(config, subprocess.DEVNULL)
    reap_sessions(proc)
    state_root = tmp_path / "b" / "job" / "training_state"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state_root.exists() and len(list(state_root.glob("step_*"))) >= 2:
            time.sleep(0.37)
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; the test needs a longer run"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    assert run_training(config) == 0
    run_a, run_b = tmp_path / "a" / "job", tmp_path / "b" / "job"
    assert _metrics(run_a) == _metrics(run_b)
    _assert_same_tensors(_lora_files(run_a, steps), _lora_files(run_b, steps))
    assert not list(state_root.glob(".tmp_*")), "temporary checkpoint folders must not survive"
    assert not list((tmp_path / "b" / "job").glob(".*.tmp")), (
        "temporary files of an interrupted save are removed"
    )
    lora = tmp_path / "b" / "job" / f"job_{steps:09d}_high_noise.safetensors"
    assert lora.stat().st_mode & 0o044, "LoRA files are readable by others (not mkstemp's 0600)"


def test_double_sigint_saves_a_checkpoint_and_exits_zero(
    tiny_i2v: Path, clips: Path, tmp_path: Path, reap_sessions
) -> None:
    job = job_dict(tiny_i2v, clips, tmp_path / "c", steps=100000)
    config = write_job(tmp_path / "c.yaml", job)
    proc = _spawn_train(config, subprocess.PIPE)
    reap_sessions(proc)
    metrics = tmp_path / "c" / "job" / "metrics_job.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        assert proc.poll() is None, "the trainer ended before its first metrics line"
        time.sleep(0.1)
    assert metrics.exists() and metrics.stat().st_size > 0, (
        "no metrics line within 180 s: the signal would land in setup"
    )
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # a second Ctrl-C while stopping/saving must not corrupt anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    rows = read_metrics(metrics)
    last = rows[-1]["step"]
    assert (tmp_path / "c" / "job" / f"job_{last:09d}_high_noise.safetensors").exists()
    assert (tmp_path / "c" / "job" / "training_state" / f"step_{last:09d}").is_dir()
    paths = RunPaths(tmp_path / "c" / "job", "job")
    adapters, state = CheckpointManager(paths, keep=5).load(last)
    assert state["step"] == last and adapters


@pytest.mark.slow
def test_resume_mid_phase_with_automagic_keeps_phase_windows_and_optimizer(
    tiny_i2v: Path, clips: Path, tmp_path: Path
) -> None:
    """Alpha phases change at steps ~20 and ~25; stopping at 23 (inside phase 'b') must not shift anything."""
    permissive = {
        "loss_improvement_rate_below": 100.0,
        "min_gradient_stability": 0.0,
        "min_loss_r2": 0.0,
        "max_loss_cv": 100.0,
    }

    def job(out: Path, steps: int) -> dict:
        spec = job_dict(
            tiny_i2v,
            clips,
            out,
            steps=steps,
            optimizer="automagic",
            lr=1e-4,
            optimizer_params={"lr_bump": 1e-5, "min_lr": 1e-5, "max_lr": 1e-3},
        )
        spec["model"]["model_kwargs"] = {"train_low_noise": False}
        spec["network"]["alpha_schedule"] = {
            "enabled": True,
            "conv_alpha_phases": {
                "a": {"alpha": 1, "min_steps": 5, "exit_criteria": permissive},
                "b": {"alpha": 2, "min_steps": 5, "exit_criteria": permissive},
                "c": {"alpha": 3},
            },
        }
        return spec

    assert run_training(write_job(tmp_path / "a.yaml", job(tmp_path / "a", 40))) == 0
    assert run_training(write_job(tmp_path / "b.yaml", job(tmp_path / "b", 23))) == 0
    assert run_training(write_job(tmp_path / "b.yaml", job(tmp_path / "b", 40))) == 0
    rows_a, rows_b = _metrics(tmp_path / "a" / "job"), _metrics(tmp_path / "b" / "job")
    phases = [row["phase"] for row in rows_a]
    assert phases[22] == "b" and phases[-1] == "c", phases
    assert rows_a == rows_b
    file_a = load_file(tmp_path / "a" / "job" / "job_000000040_high_noise.safetensors")
    file_b = load_file(tmp_path / "b" / "job" / "job_000000040_high_noise.safetensors")
    assert file_a.keys() == file_b.keys() and all(file_a[k].equal(file_b[k]) for k in file_a)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "automagic"])
def test_resume_applies_changed_optimizer_settings(
    tiny_i2v: Path, clips: Path, tmp_path: Path, optimizer: str
) -> None:
    """A resumed run uses the config's lr / max_lr, not the checkpoint's (the log said the new config was used)."""
    params = (
        {"high_noise_max_lr": 1e-3, "low_noise_max_lr": 1e-3, "lr_bump": 1e-4}
        if optimizer == "automagic"
        else {}
    )
    job = job_dict(
        tiny_i2v,
        clips,
        tmp_path / "out",
        steps=6,
        optimizer=optimizer,
        lr=1e-3 if optimizer == "adamw" else 1e-4,
        optimizer_params=params,
    )
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    job["train"]["steps"] = 12
    if optimizer == "adamw":
        job["train"]["lr"] = 1e-5
    else:
        job["train"]["optimizer_params"] = {**params, "high_noise_max_lr": 1.1e-4, "low_noise_max_lr": 1.1e-4}
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    rows = read_metrics(tmp_path / "out" / "job" / "metrics_job.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    after = [r[f"lr_{r['expert']}"] for r in rows[6:]]
    if optimizer == "adamw":
        assert after == pytest.approx([1e-5] * 6)
    else:
        assert max(r[f"lr_{r['expert']}"] for r in rows[:6]) > 1.1e-4  # the masks had grown past the new cap
        assert max(after) <= 1.1e-4 + 1e-12
    assert "now in use" in (tmp_path / "out" / "job" / "log.txt").read_text()


def test_resume_with_another_network_experts_or_optimizer_says_what_changed(
    tiny_i2v: Path, clips: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=2)
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    changes = {
        "changed shape (e.g. ": lambda j: j["network"].update(linear=8),
        "the targeted modules changed": lambda j: j["network"].update(
            network_kwargs={"only_if_contains": ["attn1"]}
        ),
        "it trained experts ['high_noise', 'low_noise'], this config trains ['high_noise']": lambda j: j[
            "model"
        ].update(model_kwargs={"train_low_noise": False}),
        "it used train.optimizer 'adamw', this config asks for 'prodigy'": lambda j: j["train"].update(
            optimizer="prodigy", lr=1.0
        ),
        "network.network_kwargs.loraplus_lr_ratio gives each expert's up matrices their own group": lambda j: (
            j["network"].update(network_kwargs={"loraplus_lr_ratio": 4})
        ),
    }
    for expected, change in changes.items():
        changed = copy.deepcopy(job)
        changed["train"]["steps"] = 4
        change(changed)
        caplog.clear()
        assert run_training(write_job(tmp_path / "changed.yaml", changed)) == 2, expected
        assert f"cannot resume {tmp_path / 'out' / 'job'} from its checkpoint at step 2" in caplog.text
        assert expected in caplog.text, caplog.text
        assert "give the job another `name`" in caplog.text
    job["train"]["steps"] = 4
    job["network"]["linear_alpha"] = 4  # a changed alpha is kept from the checkpoint, and said so
    caplog.clear()
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    assert "network.linear_alpha is 4 in the config but high_noise was trained with 2" in caplog.text
