"""Tiny Wan folders shared by the model tests (written once per session; writing is ~1 s per arch)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dirs(tiny_models):
    """arch -> tiny Diffusers folder (shared with every test package, see tests/conftest.py)."""
    return tiny_models
