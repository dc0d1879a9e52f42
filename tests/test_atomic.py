"""Atomic publishing: complete or absent, and a no-overwrite mode without a check-then-write race."""

from __future__ import annotations

import pytest

from cadence.atomic import atomic_path, atomic_write_text


def test_publish_replaces_or_refuses_to(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    with pytest.raises(FileExistsError), atomic_path(target, overwrite=False) as tmp:
        tmp.write_text("third")
    assert target.read_text() == "second" and list(tmp_path.iterdir()) == [target]  # no temp file left
    fresh = tmp_path / "b.txt"
    with atomic_path(fresh, overwrite=False) as tmp:
        tmp.write_text("new")
    assert fresh.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
