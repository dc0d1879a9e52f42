"""Job routes: create (form or YAML), list, start/queue, stop, clone, delete, metrics, log, artifacts."""

from __future__ import annotations

import glob
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cadence.config.errors import ConfigError
from cadence.data.media import media_kind
from cadence.tracking.secrets import redact_config_text
from cadence.ui import configs
from cadence.ui.context import Ctx
from cadence.ui.metrics_tail import read_metrics, read_text_tail
from cadence.ui.roots import root_problem
from cadence.ui.runner import JobBusy
from cadence.ui.store import Job

router = APIRouter(prefix="/api")


class CreateJob(BaseModel):
    form: dict[str, Any] | None = Field(None, description="dotted config paths -> values")
    yaml: str | None = Field(None, max_length=1_000_000)
    device: str = "cpu"
    queue: bool = False


def _issues_response(exc: ConfigError) -> JSONResponse:
    return JSONResponse(
        {"detail": "the config has problems", "issues": [{"path": p, "message": m} for p, m in exc.issues]},
        status_code=422,
    )


def metrics_path(job: Job) -> Path:
    return Path(job.run_dir) / f"metrics_{job.name}.jsonl"


def last_step(job: Job) -> int | None:
    """Step of the last complete metrics line, reading only the file's last few KB."""
    path = metrics_path(job)
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read()
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


CAPTION_STATUS = "caption_status.json"  # written by `cadence caption --status-file` beside the job's args


def caption_status(job: Job) -> dict | None:
    """A caption job's progress (files done/total, written, kept, failed, state), or None before it ran."""
    try:
        data = json.loads(Path(job.config_path).with_name(CAPTION_STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def job_summary(job: Job) -> dict:
    data = job.to_dict()
    data.pop("config_yaml")
    if job.kind == "caption":
        status = caption_status(job)
        data["step"] = status.get("done") if status else None
        data["total_steps"] = status.get("total", job.total_steps) if status else job.total_steps
        data["caption"] = status
    else:
        data["step"] = last_step(job)
    return data


def _train_job_only(job: Job, action: str) -> None:
    if job.kind != "train":
        raise HTTPException(
            409,
            f"job {job.id} is a {job.kind} job; {action} is for training jobs (Start runs a caption job again: "
            "files that have a caption are skipped)",
        )


@router.get("/devices")
def devices(c: Ctx) -> dict:
    return {"devices": c.runner.devices()}


@router.get("/jobs")
def list_jobs(c: Ctx) -> dict:
    c.runner.reconcile()
    return {"jobs": [job_summary(j) for j in c.store.list()]}


def unsafe_roots(cfg, home: Path) -> tuple[str, str] | None:
    """The first run or dataset folder of `cfg` that the UI must not serve files from (see ui/roots.py)."""
    problem = root_problem(Path(cfg.run_dir), home)
    if problem:
        return ("training_folder", f"{problem}; pick a project folder for the run (training_folder)")
    for i, ds in enumerate(cfg.datasets):
        problem = root_problem(Path(ds.folder_path), home)
        if problem:
            return (
                f"datasets[{i}].folder_path",
                f"{problem}, too broad to be a dataset folder; point it at the folder of your clips",
            )
    return None


@router.post("/jobs", status_code=201)
def create_job(c: Ctx, body: CreateJob):
    if (body.form is None) == (body.yaml is None):
        raise HTTPException(400, "send either `form` (field values) or `yaml` (the config text), not both")
    if problem := c.runner.device_problem(body.device):  # "0,1": several GPUs, launched through torchrun
        raise HTTPException(422, problem)
    job_id = c.store.new_id()
    job_dir = c.runner.job_dir(job_id)
    try:
        text = configs.dump_yaml(configs.form_to_dict(body.form)) if body.form is not None else body.yaml
        if body.yaml is not None:
            configs.parse_yaml_text(text)
        cfg, path = configs.write_and_validate(job_dir, text)
    except ConfigError as exc:
        return _issues_response(exc)
    problem = unsafe_roots(cfg, c.home)
    if problem:
        shutil.rmtree(job_dir, ignore_errors=True)
        return _issues_response(ConfigError([problem]))
    job = Job(
        id=job_id,
        name=cfg.name,
        status="created",
        device=body.device,
        config_yaml=text,
        config_path=str(path),
        run_dir=str(Path(cfg.run_dir).resolve()),
        total_steps=cfg.train.steps,
    )
    if not c.store.add_if_name_free(job):
        shutil.rmtree(job_dir, ignore_errors=True)
        message = f"a job named {cfg.name!r} exists; its run folder would be shared (and resumed). Pick another name"
        return _issues_response(ConfigError([("name", message)]))
    if body.queue:
        c.runner.queue(job_id)
    return job_summary(c.store.get(job_id))


@router.get("/jobs/{job_id}")
def get_job(c: Ctx, job_id: str) -> dict:
    c.runner.reconcile()
    job = c.job_or_404(job_id)
    data = job_summary(job)
    data["config_yaml"] = redact_config_text(job.config_yaml)  # webhook URLs carry tokens: never shown
    data["log_path"] = str(c.runner.job_dir(job.id) / "job.log")
    return data


@router.post("/jobs/{job_id}/start")
def start_job(c: Ctx, job_id: str) -> dict:
    job = c.job_or_404(job_id)
    if not c.runner.queue(job_id):
        raise HTTPException(
            409, f"job {job_id} is {job.status}; only created/finished/stopped/failed jobs start"
        )
    return job_summary(c.job_or_404(job_id))


@router.post("/jobs/{job_id}/stop")
def stop_job(c: Ctx, job_id: str) -> dict:
    job = c.job_or_404(job_id)
    if c.runner.stop(job_id) is None:
        raise HTTPException(409, f"job {job_id} is {job.status}; only queued or running jobs stop")
    return job_summary(c.job_or_404(job_id))


@router.post("/jobs/{job_id}/clone", status_code=201)
def clone_job(c: Ctx, job_id: str):
    job = c.job_or_404(job_id)
    _train_job_only(job, "Clone")
    new_id = c.store.new_id()
    name = configs.unique_name(job.name, c.store.names())
    try:
        cfg, path = configs.write_and_validate(
            c.runner.job_dir(new_id), configs.rename_config(job.config_yaml, name)
        )
    except ConfigError as exc:
        return _issues_response(exc)
    clone = Job(
        id=new_id,
        name=cfg.name,
        status="created",
        device=job.device,
        config_yaml=path.read_text(),
        config_path=str(path),
        run_dir=str(Path(cfg.run_dir).resolve()),
        total_steps=cfg.train.steps,
    )
    if not c.store.add_if_name_free(clone):  # another clone took the name meanwhile
        shutil.rmtree(c.runner.job_dir(new_id), ignore_errors=True)
        raise HTTPException(409, f"a job named {cfg.name!r} was just created; clone again")
    return job_summary(clone)


@router.delete("/jobs/{job_id}")
def delete_job(c: Ctx, job_id: str) -> dict:
    """Forget the job and its log folder; the run folder (LoRAs, metrics) stays on disk. Serialized with
    start and the scheduler (a queued job is dequeued and deleted at once); a running job is refused."""
    try:
        job, kept = c.runner.delete(
            job_id, lambda job: remove_job_folder(c.runner.job_dir(job.id), Path(job.run_dir))
        )
    except JobBusy as busy:
        raise HTTPException(409, str(busy)) from None
    if job is None:
        raise HTTPException(404, f"no job with id {job_id!r}")
    return {"deleted": job_id, "kept": str(kept) if kept else None}


def remove_job_folder(job_dir: Path, run_dir: Path) -> Path | None:
    """Remove the UI's folder of a job, except the run folder when it lies inside (a relative
    training_folder resolves beside the job's config.yaml): LoRAs and metrics are never deleted here.
    Returns the kept folder, if any."""
    job_dir, run_dir = job_dir.resolve(), run_dir.resolve()
    if not job_dir.is_dir():
        return run_dir if run_dir.is_dir() else None
    if run_dir == job_dir:  # never the run itself (training_folder `..` with the job id as its name)
        (job_dir / "config.yaml").unlink(missing_ok=True)
        return run_dir
    if not run_dir.is_relative_to(job_dir):
        shutil.rmtree(job_dir, ignore_errors=True)
        return None
    for child in job_dir.iterdir():
        if run_dir == child or run_dir.is_relative_to(child):
            continue
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    return run_dir


@router.get("/jobs/{job_id}/metrics")
def job_metrics(c: Ctx, job_id: str, offset: int = 0, max_points: int = 2000) -> dict:
    """Metrics lines after byte `offset` (send back the returned `offset` next time)."""
    job = c.job_or_404(job_id)
    return read_metrics(metrics_path(job), offset, max_points=max(10, min(max_points, 20000))).to_dict()


@router.get("/jobs/{job_id}/log")
def job_log(c: Ctx, job_id: str, offset: int | None = None) -> dict:
    job = c.job_or_404(job_id)
    text, new_offset = read_text_tail(c.runner.job_dir(job.id) / "job.log", offset)
    return {"text": text, "offset": new_offset}


@router.get("/jobs/{job_id}/artifacts")
def job_artifacts(c: Ctx, job_id: str) -> dict:
    job = c.job_or_404(job_id)
    run = Path(job.run_dir)
    checkpoints = []
    for f in sorted(run.glob(f"{glob.escape(job.name)}_*.safetensors")):
        try:  # the trainer prunes old checkpoints while we list them
            stat = f.stat()
        except FileNotFoundError:
            continue
        checkpoints.append({"path": str(f), "name": f.name, "size": stat.st_size, "mtime": stat.st_mtime})
    samples = []
    if (run / "samples").is_dir():
        for f in sorted((run / "samples").rglob("*")):
            kind = media_kind(f)
            try:
                if kind and f.is_file():
                    samples.append({"path": str(f), "name": f.name, "kind": kind, "mtime": f.stat().st_mtime})
            except FileNotFoundError:
                continue
    report = run / "analysis.html"
    return {
        "run_dir": str(run),
        "checkpoints": checkpoints,
        "samples": samples[-60:],
        "analysis": str(report) if report.is_file() else None,
    }


@router.post("/jobs/{job_id}/analyze", status_code=202)
def analyze_job(c: Ctx, job_id: str) -> dict:
    """Run `cadence analyze RUN_DIR` in the background; its output is appended to the job log."""
    job = c.job_or_404(job_id)
    _train_job_only(job, "Run analysis")
    c.runner.spawn_helper(
        [sys.executable, "-m", "cadence.cli", "analyze", job.run_dir], c.runner.job_dir(job.id) / "job.log"
    )
    return {"started": True}
