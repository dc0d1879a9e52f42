"""Which folders a job may use as its run folder or dataset folder, when the UI will serve files from them.

The UI serves every file under a job's run and dataset folders to whoever holds the token, so such a folder
must be a project folder, never one that holds the machine's or a user's private files: not `/` or a
top-level folder (`/home`, `/var`, `/opt`, ...), nothing inside system folders, no folder that holds a user's
home (or is one), nothing inside a hidden folder of a home (`~/.ssh`, `~/.config`), and no folder that holds
the UI's own home (its database and session secret). The one hidden place allowed is the UI's own job folder,
where jobs with a relative `training_folder` put their runs.
"""

from __future__ import annotations

import functools
import pwd
from pathlib import Path

# too broad as a whole (their sub-folders may be projects: /home/ada/data, /srv/datasets)
TOP_LEVEL = tuple(
    Path(p)
    for p in ("/", "/home", "/root", "/Users", "/var", "/run", "/opt", "/srv", "/mnt", "/media", "/tmp")
)
TOP_LEVEL += (Path("/private"), Path("/Volumes"), Path("/snap"), Path("/usr/local"))
# nothing inside these is a project folder
SYSTEM_TREES = tuple(
    Path(p)
    for p in (
        "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys",
        "/usr", "/run", "/var/run", "/var/lib", "/var/log", "/var/spool", "/var/mail", "/var/cache",
        "/var/backups", "/var/tmp",
    )
)  # fmt: skip
# a folder holding any of these is somebody's home
HOME_MARKERS = (".ssh", ".bashrc", ".profile", ".zshrc", ".gnupg", ".aws", ".netrc", ".git-credentials")


@functools.lru_cache(maxsize=1)
def user_homes() -> tuple[Path, ...]:
    """Every existing home folder of the machine's accounts, plus this process's own (read once: every file
    request asks)."""
    homes = {Path.home().resolve()}
    for entry in pwd.getpwall():
        home = Path(entry.pw_dir)
        if home.is_absolute() and home != Path("/") and home.is_dir():
            homes.add(home.resolve())
    return tuple(sorted(homes))


def _resolved(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def root_problem(folder: Path, ui_home: Path) -> str | None:
    """Why `folder` may not be served by the UI whose home is `ui_home`, or None when it may."""
    folder, ui_home = _resolved(folder), _resolved(ui_home)
    if folder.is_relative_to(ui_home / "jobs"):
        return None
    if folder in TOP_LEVEL:
        return f"{folder} is a top-level folder of the machine"
    if any(folder.is_relative_to(tree) for tree in SYSTEM_TREES):
        return f"{folder} is inside a system folder"
    if ui_home.is_relative_to(folder):
        return f"{folder} holds the UI's own home ({ui_home}: its database and session secret)"
    for home in user_homes():
        if home.is_relative_to(folder):
            return f"{folder} is or holds the home folder {home}"
        if folder.is_relative_to(home):
            first = folder.relative_to(home).parts[:1]
            if first and first[0].startswith("."):
                return f"{folder} is inside the hidden folder {home / first[0]} of a home folder"
    markers = [name for name in HOME_MARKERS if (folder / name).exists()]
    if markers:
        return f"{folder} holds {', '.join(markers)}: it looks like somebody's home folder"
    return None
