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


def closest(key: str, valid: Iterable[str]) -> str | None:
    """The valid name a typo most likely meant (difflib ratio >= 0.6), or None."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return match[0] if match else None
