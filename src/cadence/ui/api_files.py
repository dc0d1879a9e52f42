"""File/media routes and the datasets page API (browse, captions, buckets, uploads, caption jobs).

Every path goes through `files.resolve_safe` against the current allowed roots. HTML files (the analysis
report) are served with a sandbox CSP so a report can never act with the UI's origin or cookie.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from cadence.atomic import atomic_path, atomic_write_text
from cadence.data.captions import JSONL_NAME, read_jsonl_captions
from cadence.data.media import dataset_media, media_kind
from cadence.tools.caption_args import DEFAULT_MODEL
from cadence.ui.api_jobs import CAPTION_STATUS, job_summary
from cadence.ui.context import MAX_UPLOAD_BYTES, Ctx, UIContext
from cadence.ui.files import FileAccessError, content_type, resolve_safe
from cadence.ui.store import Job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api")


def _safe(path: str, roots: list[Path]) -> Path:
    try:
        return resolve_safe(path, roots)
    except FileAccessError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _serve(real: Path, download: bool) -> FileResponse:
    # every served file is sandboxed when opened as a page (xhtml, svg, html...): it never acts with the UI's
    # origin; the analysis report (html) keeps its scripts inside the sandbox
    sandbox = "sandbox allow-scripts" if real.suffix.lower() in (".html", ".htm") else "sandbox"
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": sandbox}
    return FileResponse(
        real,
        media_type=content_type(real),
        headers=headers,
        content_disposition_type="attachment" if download else "inline",
        filename=real.name,
    )


@router.get("/files")
def get_file(c: Ctx, path: str, download: bool = False) -> FileResponse:
    """Any file under a run folder, job folder or dataset root (checkpoints, logs, reports)."""
    return _serve(_safe(path, c.allowed_roots()), download)


@router.get("/media")
def get_media(c: Ctx, path: str) -> FileResponse:
    """Images and videos only (range requests work, so videos seek)."""
    real = _safe(path, c.allowed_roots())
    if media_kind(real) is None:
        raise HTTPException(415, f"{real.name} is not an image or video")
    return _serve(real, download=False)


# ---------------------------------------------------------------------------------------------- datasets
def _dataset_root(root: str, c: UIContext) -> Path:
    wanted = Path(root).resolve()
    for r in c.dataset_roots():
        if r.resolve() == wanted:
            return wanted
    raise HTTPException(404, f"{root} is not a configured dataset root")


def _dataset_config(root: Path, c: UIContext):
    """(job, cfg, dataset) of the first job whose config trains on `root`, or None."""
    from cadence.config.loader import load_config

    for job in c.store.list():
        try:
            cfg = load_config(job.config_path)
        except Exception:  # a broken or deleted config simply contributes nothing
            continue
        for ds in cfg.datasets:
            if Path(ds.folder_path).resolve() == root:
                return job, cfg, ds
    return None


def _caption_ext(root: Path, c: UIContext) -> str:
    """The caption extension training reads for this root (datasets[].caption_ext), else txt."""
    found = _dataset_config(root, c)
    return found[2].caption_ext if found else "txt"


def _buckets(root: Path, c: UIContext) -> tuple[dict[str, dict], str | None]:
    """path -> bucket of the first job whose config uses `root`, from cadence.data's own index."""
    from cadence.data.dataset import build_dataset_index

    found = _dataset_config(root, c)
    if found is None:
        return {}, None
    job, cfg, _ = found
    spatial, temporal, fps = _geometry(cfg.model.arch)
    try:
        index = build_dataset_index(cfg, spatial, temporal, fps)
    except Exception as exc:
        return {}, f"buckets unavailable: {exc}"
    out = {}
    for item in [*index.train_items, *index.eval_items]:
        out.setdefault(
            str(Path(item.path).resolve()),
            {"width": item.width, "height": item.height, "frames": len(item.frames)},
        )
    return out, f"buckets from job {job.name} ({cfg.model.arch})"


def _geometry(arch: str) -> tuple[int, int, int]:
    """Bucket multiples for `arch` from the models package when it exposes them; the indexer's defaults else."""
    try:
        from cadence.models.registry import arch_geometry  # type: ignore[attr-defined]
    except ImportError:
        return 16, 4, 16
    return tuple(arch_geometry(arch))  # type: ignore[return-value]


@router.get("/datasets")
def list_roots(c: Ctx) -> dict:
    return {"roots": [str(r) for r in c.dataset_roots()]}


@router.get("/datasets/files")
def list_dataset_files(c: Ctx, root: str) -> dict:
    base = _dataset_root(root, c)
    buckets, note = _buckets(base, c)
    ext = _caption_ext(base, c)
    listed = _jsonl_captions(base, c)
    items = []
    for f in dataset_media(base):  # what training reads (its own rule); a dangling link cannot be shown
        if not f.is_file():
            continue
        caption = f.with_suffix("." + ext)
        real = str(f.resolve())
        text = _read_caption(caption, c)
        items.append(
            {
                "path": str(f),
                "name": str(f.relative_to(base)),
                "kind": media_kind(f),
                "caption": text if text is not None else listed.get(f.name),
                "caption_source": "file" if text is not None else "jsonl" if f.name in listed else None,
                "caption_path": str(caption),
                "bucket": buckets.get(real),
            }
        )
    return {"root": str(base), "items": items, "bucket_note": note}


def _jsonl_captions(base: Path, c: UIContext) -> dict[str, str]:
    """The folder's captions.jsonl entries (what the loader reads for files without a same-stem caption),
    when that file resolves inside the served roots."""
    path = base / JSONL_NAME
    if not path.is_file():
        return {}
    try:
        real = resolve_safe(str(path), c.allowed_roots())
    except FileAccessError:
        log.warning("%s points outside the dataset and run folders; not shown", path)
        return {}
    return read_jsonl_captions(real.parent).captions if real.name == JSONL_NAME else {}


def _read_caption(caption: Path, c: UIContext) -> str | None:
    """The caption's text when it is a file inside the served roots (a symlinked caption pointing outside
    them is not read: it would leak that file), else None."""
    if not caption.is_file():
        return None
    try:
        real = resolve_safe(str(caption), c.allowed_roots())
    except FileAccessError:
        log.warning("caption %s points outside the dataset and run folders; not shown", caption)
        return None
    return real.read_text(encoding="utf-8", errors="replace")


def caption_target(media: Path, ext: str) -> Path:
    """Where the caption of `media` is written; refused (HTTPException) when that name is media the loader
    would train on, the media file itself, or outside the media's folder, whatever the config says."""
    target = media.with_suffix("." + ext.lstrip("."))
    if target.parent != media.parent or media_kind(target) is not None or target == media:
        raise HTTPException(
            422,
            f"the caption of {media.name} would be written to {target.name}, which is a media file the "
            "dataset loader trains on; set datasets[].caption_ext to txt in the job config",
        )
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise HTTPException(
            409, f"{target} is a link or not a regular file; the editor only replaces plain caption files"
        )
    return target


class CaptionEdit(BaseModel):
    path: str = Field(description="the media file whose caption is edited")
    text: str = Field(max_length=100_000)


@router.put("/datasets/caption")
def put_caption(c: Ctx, body: CaptionEdit) -> dict:
    """Write the caption beside a media file atomically (a crash leaves the old or the new caption)."""
    media = _safe(body.path, c.dataset_roots())
    if media_kind(media) is None:
        raise HTTPException(415, f"{media.name} is not an image or video")
    root = next((r.resolve() for r in c.dataset_roots() if media.is_relative_to(r.resolve())), media.parent)
    target = caption_target(media, _caption_ext(root, c))
    atomic_write_text(target, body.text)
    return {"caption_path": str(target), "bytes": len(body.text.encode())}


@router.post("/datasets/upload", status_code=201)
async def upload(c: Ctx, request: Request, root: str, filename: str) -> dict:
    """Stream the raw request body into `root/filename` (media only), refusing more than the upload limit."""
    base = _dataset_root(root, c)
    name = os.path.basename(filename)
    if not name or name != filename or name.startswith(".") or media_kind(Path(name)) is None:
        raise HTTPException(400, f"filename {filename!r} must be a plain image/video file name")
    declared = int(request.headers.get("content-length") or 0)
    if declared > MAX_UPLOAD_BYTES:
        raise HTTPException(
            413, f"upload is {declared} bytes; the limit is {MAX_UPLOAD_BYTES} (CADENCE_UI_MAX_UPLOAD)"
        )
    target, total = base / name, 0
    exists = HTTPException(
        409, f"{name} already exists in {base}; rename the file or delete the old one first"
    )
    if target.exists():
        raise exists
    try:
        with atomic_path(target, overwrite=False) as tmp, open(tmp, "wb") as out:
            async for chunk in request.stream():
                total += len(chunk)
                if total > MAX_UPLOAD_BYTES:
                    raise HTTPException(413, f"upload exceeds the limit of {MAX_UPLOAD_BYTES} bytes")
                out.write(chunk)
    except FileExistsError:  # a parallel upload of the same name finished first
        raise exists from None
    return {"path": str(target), "bytes": total}


# ------------------------------------------------------------------------------------------ caption jobs
class CaptionJob(BaseModel):
    """A `cadence caption` run over one dataset root, queued on a device slot like a training job."""

    root: str
    model: str = Field(DEFAULT_MODEL, min_length=1, max_length=1000, description="model folder or hub id")
    style: Literal["motion", "character"] = "motion"
    trigger_word: str | None = Field(None, max_length=200)
    prompt: str | None = Field(None, max_length=20_000, description="custom instruction ({trigger}, {media})")
    frames: int = Field(8, ge=1, le=64)
    max_new_tokens: int = Field(256, ge=1, le=4096)
    output_format: Literal["text", "jsonl"] = "text"
    overwrite: bool = False
    quantize: Literal["fp8", "nf4"] | None = None
    device: str = "cpu"


def _one_line(name: str, value: str) -> str:
    """`value` as one argument-file line: no line breaks or other control characters."""
    if any(ord(ch) < 32 for ch in value):
        raise HTTPException(422, f"{name} contains a line break or control character; give it on one line")
    return value


def _caption_model(value: str) -> str:
    model = _one_line("model", value.strip())
    looks_local = model.startswith(("/", ".", "~")) or model.count("/") > 1  # a hub id is `org/name`
    if looks_local and not Path(model).expanduser().is_dir():
        raise HTTPException(
            422,
            f"model folder {model} does not exist; give a model folder or a hub id such as {DEFAULT_MODEL}",
        )
    return model


def caption_arguments(base: Path, body: CaptionJob, job_dir: Path, caption_ext: str) -> list[str]:
    """The job's `cadence caption` arguments, one per line of its argument file (`--opt=value`, so no value is
    mistaken for an option or an @file)."""
    args = [
        _one_line("dataset folder", str(base)),
        f"--model={_caption_model(body.model)}",
        f"--style={body.style}",
        f"--frames={body.frames}",
        f"--max-new-tokens={body.max_new_tokens}",
        f"--output-format={body.output_format}",
        f"--caption-ext={caption_ext}",
        f"--status-file={job_dir / CAPTION_STATUS}",
    ]
    trigger = (body.trigger_word or "").strip()
    if trigger:
        args.append(f"--trigger-word={_one_line('trigger_word', trigger)}")
    if body.prompt and body.prompt.strip():
        atomic_write_text(job_dir / "prompt.txt", body.prompt.strip() + "\n")
        args.append(f"--prompt-file={job_dir / 'prompt.txt'}")
    if body.overwrite:
        args.append("--overwrite")
    if body.quantize:
        args.append(f"--quantize={body.quantize}")
    return args


@router.post("/datasets/caption-jobs", status_code=201)
def create_caption_job(c: Ctx, body: CaptionJob) -> dict:
    """Queue `cadence caption` over a dataset root: a job of kind "caption" (the job list, Stop, the log and
    the device slots are the training jobs')."""
    from cadence.tools.caption_media import list_media

    base = _dataset_root(body.root, c)
    if body.device not in c.runner.devices():
        raise HTTPException(422, f"device {body.device!r} is not one of {c.runner.devices()}")
    job_id = c.store.new_id()
    job_dir = c.runner.job_dir(job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        args = caption_arguments(base, body, job_dir, _caption_ext(base, c))
    except HTTPException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    text = "".join(line + "\n" for line in args)
    atomic_write_text(job_dir / "caption.args", text)
    job = Job(
        id=job_id,
        name=f"caption_{base.name}_{job_id[:6]}",
        status="created",
        device=body.device,
        config_yaml=text,
        config_path=str(job_dir / "caption.args"),
        run_dir=str(base),
        total_steps=len(list_media(base)),
        kind="caption",
    )
    if not c.store.add_if_name_free(job):
        shutil.rmtree(job_dir, ignore_errors=True)
        raise HTTPException(409, "a caption job with this name was just created; try again")
    c.runner.queue(job_id)
    return job_summary(c.job_or_404(job_id))


@router.get("/datasets/caption-jobs")
def list_caption_jobs(c: Ctx, root: str) -> dict:
    """The caption jobs of one dataset root, newest first, with their progress."""
    base = _dataset_root(root, c)
    c.runner.reconcile()
    jobs = [j for j in c.store.list() if j.kind == "caption" and Path(j.run_dir) == base]
    return {"jobs": [job_summary(j) for j in reversed(jobs)]}
