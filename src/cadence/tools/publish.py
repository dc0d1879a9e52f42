"""`cadence publish RUN_DIR --repo ID`: one checkpoint of a run, its samples and a model card, to the Hub.

The upload folder is assembled in `{run_dir}/hub_upload/` (hard links where the filesystem allows, else
copies; the run's own files are only read) and that exact folder is what `--dry-run` leaves for a look
and what is uploaded. The upload goes through `huggingface_hub` (token from `HF_TOKEN` or `hf auth login`,
endpoint from `HF_ENDPOINT`), retried on transient errors; a failure leaves every local file as it was.
`save.push_to_hub` runs the same code at the end of training (`cadence.tracking.hub`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from cadence.networks.formats import detect_layout
from cadence.tools.model_card import CardFile, CardInputs, CardSample, render_card
from cadence.tools.run_folder import RunData, load_run

log = logging.getLogger(__name__)

STAGING = "hub_upload"
MARKER = ".cadence_publish"  # marks a folder this tool built, so rebuilding it may clear it
SAMPLE_MEDIA = (".mp4", ".webp", ".png")  # the sidecar JSON is left out: it names local paths


class PublishError(Exception):
    """A problem the user fixes (no such checkpoint, no token, the Hub refused)."""


@dataclass
class PublishPlan:
    run_dir: Path
    name: str
    step: int
    files: dict[str, Path]  # path in the repo -> local source file
    card: str
    config_text: str = ""  # config.yaml as uploaded: the resolved config with local paths cut to names


# keys whose values are paths on this machine: the uploaded config.yaml keeps only their last part
_LOCAL_PATH_KEYS = frozenset(
    {"training_folder", "folder_path", "control_path", "cache_directory", "ctrl_img", "lora_path",
     "pretrained_lora_path", "name_or_path", "extras_name_or_path"}
)  # fmt: skip


def _public(value: Any, is_path: bool = False) -> Any:
    """A config value with machine paths (home folders, user names) reduced to their last part; a hub id
    (`owner/name`) stays as it is. `is_path`: the value sits under one of the path keys."""
    if isinstance(value, dict):
        return {k: _public(v, is_path or str(k) in _LOCAL_PATH_KEYS) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v, is_path) for v in value]
    if is_path and isinstance(value, str) and (value.startswith(("/", "~", ".")) or "\\" in value):
        return Path(value).name or value
    return value


def _base_model(model: dict[str, Any]) -> str:
    """The base the card names: name_or_path, or beside single-file transformer checkpoints the Diffusers
    folder / hub id they go with (extras_name_or_path; a checkpoint file is no Hub id to link to)."""
    source = model.get("name_or_path", "")
    if isinstance(source, dict) or str(source).lower().endswith(".safetensors"):
        return str(model.get("extras_name_or_path") or "")
    return str(source)


def public_config_text(config_path: Path) -> str:
    """config.yaml for the Hub: already without secrets; local paths are cut to their names."""
    import yaml

    data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    note = "# resolved by cadence; local paths are shortened to their last part for publishing\n"
    return note + yaml.safe_dump(_public(data), sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------------ planning
def _analysis(run_dir: Path) -> tuple[Any | None, str | None]:
    from cadence.tools.analyze import analyze_run

    try:
        return analyze_run(run_dir), None
    except (FileNotFoundError, ValueError) as exc:
        return None, f"No analysis: {exc}"


def choose_step(run: RunData, checkpoint: str | int | None, report: Any | None) -> int:
    """'latest' (default), 'best' (the analysis' first recommendation) or a step number."""
    steps = run.steps
    if checkpoint in (None, "latest"):
        return steps[-1]
    if checkpoint == "best":
        if report is None or not report.recommendations:
            raise PublishError(
                f"{run.run_dir}: the analysis recommends no checkpoint here (see `cadence analyze "
                f"{run.run_dir}`); pass --checkpoint STEP (one of {', '.join(map(str, steps))})"
            )
        return int(report.recommendations[0].step)
    try:
        step = int(checkpoint)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PublishError(f"--checkpoint {checkpoint!r}: give a step number, 'latest' or 'best'") from None
    if step not in steps:
        raise PublishError(
            f"{run.run_dir}: no checkpoint at step {step}; saved steps: {', '.join(map(str, steps))}"
        )
    return step


def _card_file(expert: str, path: Path) -> CardFile:
    from cadence.networks.formats import load_lora_file
    from cadence.networks.loaders import diffusers, shape_of

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        layout = detect_layout(list(handle.keys()), path)
    keep = {
        k: metadata[k] for k in ("rank", "alpha", "conv_alpha", "step", "expert", "arch") if k in metadata
    }
    loads = diffusers(shape_of(load_lora_file(path).modules, layout)).loads
    return CardFile(expert=expert, path=path.name, layout=layout, metadata=keep, diffusers_loads=loads)


def _samples(run_dir: Path, step: int) -> tuple[list[CardSample], dict[str, Path]]:
    """The samples of the last sampled step at or before `step` (the baseline at 0 only when nothing later)."""
    folder = run_dir / "samples"
    by_step: dict[int, list[Path]] = {}
    for sidecar in sorted(folder.glob("*_*.json")) if folder.is_dir() else []:
        head = sidecar.stem.split("_")[0]
        if head.isdigit() and int(head) <= step:
            by_step.setdefault(int(head), []).append(sidecar)
    if not by_step:
        return [], {}
    chosen = max(by_step)
    samples, files = [], {}
    for sidecar in by_step[chosen]:
        try:
            prompt = str(json.loads(sidecar.read_text(encoding="utf-8")).get("prompt", ""))
        except (OSError, json.JSONDecodeError):
            prompt = ""
        media = {}
        for ext in SAMPLE_MEDIA:
            source = sidecar.with_suffix(ext)
            if source.is_file():
                media[ext] = f"samples/{source.name}"
                files[media[ext]] = source
        if media:
            samples.append(CardSample(prompt=prompt, media=media, step=chosen))
    return samples, files


def _analysis_lines(report: Any) -> list[str]:
    from cadence.tools.analyze import collapse_warnings

    lines = collapse_warnings(report)
    for rec in report.recommendations:
        lines.append(f"recommended: step {rec.step} ({'; '.join(rec.reasons)})")
    return lines + [f"note: {note}" for note in report.notes]


def plan_publish(
    run_dir: Path | str, checkpoint: str | int | None = None, repo_id: str | None = None
) -> PublishPlan:
    run_dir = Path(run_dir)
    try:
        run = load_run(run_dir)
    except FileNotFoundError as exc:
        raise PublishError(str(exc)) from None
    config_path = run_dir / "config.yaml"
    if run.config is None or not config_path.is_file():
        raise PublishError(f"{config_path} is missing or unreadable: publish needs the run's resolved config")
    report, note = _analysis(run_dir)
    step = choose_step(run, checkpoint, report)
    files: dict[str, Path] = {}
    card_files = []
    for expert in run.experts:
        path = run.checkpoints[expert].get(step)
        if path is not None:
            files[path.name] = path
            card_files.append(_card_file(expert, path))
    alpha_json = run_dir / f"{run.name}_{step:09d}_alpha_scheduler.json"
    if alpha_json.is_file():
        files[alpha_json.name] = alpha_json
    samples, sample_files = _samples(run_dir, step)
    files.update(sample_files)
    model = run.config.get("model") or {}
    inputs = CardInputs(
        name=run.name,
        repo_id=repo_id,
        step=step,
        arch=str(model.get("arch")),
        base_model=_base_model(model),
        config=run.config,
        files=card_files,
        samples=samples,
        analysis_lines=_analysis_lines(report) if report is not None else [],
        recommended=int(report.recommendations[0].step)
        if report is not None and report.recommendations
        else None,
        analysis_note=note,
    )
    try:
        card = render_card(inputs)
    except ValueError as exc:
        raise PublishError(f"{config_path}: {exc}") from None
    return PublishPlan(
        run_dir=run_dir,
        name=run.name,
        step=step,
        files=files,
        card=card,
        config_text=public_config_text(config_path),
    )


# --------------------------------------------------------------------------------------------- folder
def _place(source: Path, target: Path) -> None:
    """A hard link (no copy of multi-GB files) or, across filesystems, a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_folder(plan: PublishPlan, folder: Path | None = None) -> Path:
    """Build the exact upload folder (README.md = the card); an earlier one this tool built is replaced."""
    folder = folder or plan.run_dir / STAGING
    if folder.exists():
        if not (folder / MARKER).is_file():
            raise PublishError(f"{folder} exists and was not made by cadence publish; move it away first")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for repo_path, source in plan.files.items():
        _place(source, folder / repo_path)
    (folder / "README.md").write_text(plan.card, encoding="utf-8")
    (folder / "config.yaml").write_text(plan.config_text, encoding="utf-8")
    (folder / MARKER).write_text(f"step {plan.step}\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------- upload
def _permanent(error: Exception) -> str | None:
    """Why retrying cannot help, or None for a transient error."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so huggingface_hub sends nothing; unset it and publish again"
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return (
                f"the Hub refused the token (HTTP {status}): set HF_TOKEN to a token with write access or run "
                "`hf auth login`"
            )
        if 400 <= status < 500 and status not in (408, 429):
            return f"the Hub answered HTTP {status}"
    return None


def upload_folder(
    folder: Path,
    repo_id: str,
    private: bool,
    commit_message: str,
    endpoint: str | None = None,
    token: str | None = None,
    attempts: int = 3,
    backoff_s: float = 5.0,
    abandon: Callable[[], bool] | None = None,
    scrub: Callable[[str], str] = str,
) -> str:
    """create_repo (exist_ok) + upload_folder, retried `attempts` times; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                repo_type="model",
                commit_message=commit_message,
                ignore_patterns=[MARKER],
            )
            return str(info.commit_url)
        except Exception as error:  # noqa: BLE001 - reported in words; never fatal to the caller's files
            last = scrub(f"{type(error).__name__}: {error}")
            permanent = _permanent(error)
            if permanent:
                raise PublishError(f"upload to {repo_id} failed: {permanent}") from None
            log.warning("upload to %s failed (attempt %d of %d): %s", repo_id, attempt, attempts, last)
        if attempt < attempts:
            deadline = time.monotonic() + backoff_s * 2 ** (attempt - 1)
            while time.monotonic() < deadline:
                if abandon is not None and abandon():
                    raise PublishError(f"upload to {repo_id} abandoned (stop requested)")
                time.sleep(0.05)
    raise PublishError(f"upload to {repo_id} failed after {attempts} attempts: {last}")


def publish_run(
    run_dir: Path | str,
    repo_id: str | None,
    checkpoint: str | int | None = None,
    private: bool = False,
    dry_run: bool = False,
    **upload_kwargs: Any,
) -> tuple[Path, str | None]:
    """Plan, build the folder and (unless dry_run) upload it; returns (folder, commit URL or None)."""
    plan = plan_publish(run_dir, checkpoint, repo_id)
    folder = write_folder(plan)
    if dry_run:
        return folder, None
    if not repo_id:
        raise PublishError("--repo ID is needed to upload (or pass --dry-run to only build the folder)")
    message = f"Cadence: {plan.name} checkpoint step {plan.step}"
    return folder, upload_folder(folder, repo_id, private, message, **upload_kwargs)


def publish_command(args: argparse.Namespace) -> int:
    try:
        folder, url = publish_run(
            args.run_dir, args.repo, checkpoint=args.checkpoint, private=args.private, dry_run=args.dry_run
        )
    except PublishError as exc:
        log.error("%s", exc)
        return 2
    files = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER
    )
    size = sum((folder / f).stat().st_size for f in files)
    if url is None:
        sys.stdout.write(
            f"dry run: {folder} holds what would be uploaded ({len(files)} files, {size / 2**20:.1f} MiB):\n"
        )
        sys.stdout.write("".join(f"  {f}\n" for f in files))
        return 0
    sys.stdout.write(f"published {len(files)} files ({size / 2**20:.1f} MiB) to {args.repo}: {url}\n")
    return 0
