"""What every route needs: the home folder, job store, runner, and the folders the UI may serve."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from fastapi import Depends, HTTPException, Request

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
        """Dataset folders of every job's config (resolved at creation) plus CADENCE_DATASET_ROOTS."""
        roots: list[Path] = list(self.extra_dataset_roots)
        for job in self.store.list():
            for folder in job_dataset_folders(job):
                if folder not in roots:
                    roots.append(folder)
        return roots

    def allowed_roots(self) -> list[Path]:
        roots = [*self.dataset_roots(), self.home / "jobs"]
        roots += [Path(j.run_dir) for j in self.store.list()]
        return roots


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
