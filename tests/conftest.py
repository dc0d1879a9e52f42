"""Shared test fixtures. Tests train real tiny models; keep torch single-threaded for repeatability."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """arch -> a tiny random-weight Diffusers folder, written at most once per test session."""
    from cadence.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    made: dict = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = write_tiny_model(root / arch, arch, seed=0)
        return made[arch]

    return get


@pytest.fixture(scope="session")
def tiny_i2v(tiny_models):
    """The tiny Wan 2.2 I2V A14B folder most training and sampling tests use."""
    return tiny_models("wan22_14b_i2v")


def _logging_state() -> tuple:
    own = logging.getLogger("cadence")
    return logging.root.manager.disable, logging.getLogger().level, own.level, own.disabled, own.propagate


@pytest.fixture(autouse=True)
def logging_left_as_found():
    """A test (or the code it runs) that leaves Cadence's logging quieter makes every later test that reads
    log.txt or caplog fail far from the cause: fail the test that did it instead."""
    before = _logging_state()
    yield
    after = _logging_state()
    assert after == before, (
        f"logging state (disable, root level, cadence level/disabled/propagate) {before} -> {after}"
    )


@pytest.fixture
def reap_sessions():
    """Register a Popen started with start_new_session: if it still runs when the test ends (a failed
    assert, a timeout), it and every descendant (torchrun's workers run in sessions of their own) are
    SIGKILLed, so no trainer keeps loading the rest of the suite."""
    import signal
    import subprocess

    from cadence.ui.runner import signal_descendants

    started: list[subprocess.Popen] = []
    yield started.append
    for proc in started:
        if proc.poll() is not None:
            continue
        signal_descendants(proc.pid, signal.SIGKILL)  # first: once the leader dies they are reparented
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
