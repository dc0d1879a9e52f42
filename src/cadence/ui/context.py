"""What every route needs: the home folder, job store, runner, and the folders the UI may serve."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from fastapi import Depends, HTTPException, Request

from cadence.ui.roots import root_problem
from cadence.ui.runner import JobRunner
from cadence.ui.store import Job, JobStore

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = int(os.environ.get("CADENCE_UI_MAX_UPLOAD", str(512 * 1024 * 1024)))
MAX_BODY_BYTES = 2 * 1024 * 1024  # JSON/YAML bodies (configs, captions)


def default_home() -> Path:
    return Path(os.environ.get("CADENCE_HOME") or Path.home() / ".cadence").expanduser()


@dataclass
class UIContext:
    home: Path
    store: JobStore
    runner: JobRunner
    token: str | None = None
    extra_dataset_roots: list[Path] = field(default_factory=list)
    _refused: set[Path] = field(default_factory=set)  # roots already warned about

    def job_or_404(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job with id {job_id!r}")
        return job

    def job_config(self, job: Job) -> dict:
        try:
            data = yaml.safe_load(job.config_yaml)
        except yaml.YAMLError:
            return {}
        return data if isinstance(data, dict) else {}

    def dataset_roots(self) -> list[Path]:
        """Dataset folders of every job's config (read now, so a config edited on disk counts) plus
        CADENCE_DATASET_ROOTS; a folder too broad to serve (ui/roots.py) is left out, whoever named it."""
        roots: list[Path] = []
        for folder in [
            *self.extra_dataset_roots,
            *(f for job in self.store.list() for f in job_dataset_folders(job)),
        ]:
            if folder not in roots and self._servable(folder):
                roots.append(folder)
        return roots

    def allowed_roots(self) -> list[Path]:
        roots = [*self.dataset_roots(), self.home / "jobs"]
        roots += [Path(j.run_dir) for j in self.store.list() if self._servable(Path(j.run_dir))]
        return roots

    def _servable(self, folder: Path) -> bool:
        problem = root_problem(folder, self.home)
        if problem and folder not in self._refused:
            self._refused.add(folder)
            log.warning("not serving files from %s: %s", folder, problem)
        return problem is None


def job_dataset_folders(job: Job) -> list[Path]:
    """The job's dataset folders as the trainer sees them (loaded with the project's config loader)."""
    from cadence.config.errors import ConfigError
    from cadence.config.loader import load_config

    try:
        cfg = load_config(job.config_path)
    except (ConfigError, OSError):
        return []
    return [Path(ds.folder_path).resolve() for ds in cfg.datasets]


def env_dataset_roots() -> list[Path]:
    raw = os.environ.get("CADENCE_DATASET_ROOTS", "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def ctx(request: Request) -> UIContext:
    return request.app.state.ctx


Ctx = Annotated[UIContext, Depends(ctx)]
