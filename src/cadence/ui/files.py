"""Safe file serving: only files under the allowed roots (dataset roots and run/job folders).

A requested path is refused when it has a `..` part or a NUL byte, and otherwise resolved with
`strict=True` (following every symlink) and required to lie inside one of the resolved roots. So `..`,
percent-encoded traversal (the framework decodes once; the decoded `..` is refused), and symlinks that
point out of a root are all rejected, while symlinks that stay inside a root keep working.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable
from pathlib import Path, PurePosixPath


class FileAccessError(Exception):
    """`status` is the HTTP status to answer with (400 malformed, 403 outside the roots, 404 missing)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def resolve_safe(requested: str, roots: Iterable[Path]) -> Path:
    """The real path of `requested` if it is a file inside one of `roots`; else FileAccessError."""
    if not requested or "\0" in requested:
        raise FileAccessError(400, "path is empty or contains a NUL byte")
    if ".." in PurePosixPath(requested.replace("\\", "/")).parts:
        raise FileAccessError(
            400, f"path {requested!r} contains '..'; give a path inside a run or dataset folder"
        )
    candidate = Path(requested)
    if not candidate.is_absolute():
        raise FileAccessError(400, f"path {requested!r} is not absolute")
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise FileAccessError(404, f"no such file: {requested}") from None
    for root in roots:
        try:
            root_real = Path(root).resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real == root_real or real.is_relative_to(root_real):
            if not real.is_file():
                raise FileAccessError(404, f"not a file: {requested}")
            return real
    raise FileAccessError(403, f"{requested} is outside the dataset and run folders the UI may serve")


def content_type(path: Path) -> str:
    if path.suffix.lower() == ".jsonl":
        return "application/x-ndjson"
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"
