"""The one error type for bad configs: every problem found, each with the dotted path the user wrote."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class ConfigError(Exception):
    """A config that cannot run. `issues` lists every problem at once so users fix them in one pass.

    Each issue is `(dotted_path, message)`; the path follows the user's own file layout
    (`train.lr` for the flat layout, `config.process[0].train.lr` for the seed layout).
    """

    def __init__(self, issues: list[tuple[str, str]], source: Path | str | None = None) -> None:
        self.issues: list[tuple[str, str]] = list(issues)
        self.source = Path(source) if source is not None else None
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source is not None else ""
        count = len(self.issues)
        head = f"{count} problem{'s' if count != 1 else ''} in the config{where}:"
        lines = [head]
        for path, message in self.issues:
            lines.append(f"  - {path}: {message}" if path else f"  - {message}")
        return "\n".join(lines)


def format_path(parts: tuple[str | int, ...] | list[str | int], prefix: str = "") -> str:
    """('datasets', 0, 'folder_path') -> 'datasets[0].folder_path', under `prefix` (e.g. 'config.process[0]')."""
    text = prefix
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`, case-insensitive."""
    a, b = a.lower(), b.lower()
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb)))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def closest(key: str, valid: Iterable[str]) -> str | None:
    """The valid name a typo most likely meant, or None. A typo is a slip of the keyboard: at most one edit
    per eight characters (at least one), so `lrr` -> `lr` and `lr_bumb` -> `lr_bump`, but never a different
    word that merely looks alike (`ctrl_idx` is not `ctrl_img`, `te_dtype` not `qtype`)."""
    budget = max(1, len(key) // 8)
    scored = [
        (edit_distance(key, name), -difflib.SequenceMatcher(None, key, name).ratio(), name) for name in valid
    ]
    near = sorted(s for s in scored if s[0] <= budget and s[2] != key)
    return near[0][2] if near else None
