"""`cadence caption DATASET_DIR`: caption a dataset folder's images and clips with a vision-language model.

Safe on a real folder: a file that already has a caption (what the loader would read) is left alone unless
`--overwrite`; each caption is written as soon as it is produced (`caption_output.py`), so a stopped or
killed run resumes where it stopped; an unreadable file is skipped with one warning and counted; a progress
bar shows the rate and ETA, and a summary closes the run. SIGINT (Ctrl-C, the UI's Stop) ends the run after
the caption in progress, with the summary, exit status 130. The model is loaded only when some file needs
a caption. See docs/captioning.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cadence.atomic import atomic_write_text
from cadence.data.media import MediaError
from cadence.models.caption_vlm import CaptionModelError, load_caption_model
from cadence.stop_flag import StopFlag
from cadence.tools.caption_media import FrameOptions, list_media, load_visual
from cadence.tools.caption_output import (
    CaptionOutputError,
    JsonlSink,
    caption_lock,
    check_caption_ext,
    open_sink,
    sweep_temporaries,
)
from cadence.tools.caption_prompts import PromptError, custom_prompt, render_prompt, with_trigger

log = logging.getLogger(__name__)
STOPPED = 130


@dataclass
class Tally:
    """What happened to each file; written to `--status-file` after every file (the UI reads it)."""

    total: int = 0
    done: int = 0  # files handled in any way (progress)
    written: int = 0
    kept: int = 0  # had a caption, not overwritten
    kept_empty: int = 0  # of which empty
    shadowed: int = 0  # jsonl --overwrite: a same-stem file the loader reads first
    failed: int = 0
    cut: int = 0  # captions that reached --max-new-tokens
    failures: list[str] = field(default_factory=list)
    state: str = "running"  # running, finished, stopped, failed
    where: str = ""
    caption_seconds: float = 0.0  # time spent captioning (after the model loaded)


@dataclass(frozen=True)
class CaptionOptions:
    folder: Path
    model: str
    template: str | None
    style: str
    trigger: str | None
    output_format: str
    caption_ext: str
    overwrite: bool
    max_new_tokens: int
    frames: FrameOptions
    device: str
    dtype: str
    quantize: str | None
    status_file: Path | None


def _positive(name: str, value: int, least: int = 1) -> int:
    if value < least:
        raise CaptionOutputError(f"{name} {value} must be at least {least}")
    return value


def options_from_args(args: argparse.Namespace) -> CaptionOptions:
    """Checked options (raises CaptionOutputError / PromptError with the option named)."""
    folder = Path(args.dataset_dir).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CaptionOutputError(f"DATASET_DIR {folder} {what}; give the folder of your images and clips")
    trigger = (args.trigger_word or "").strip() or None
    return CaptionOptions(
        folder=folder.resolve(),
        model=args.model,
        template=custom_prompt(args.prompt, args.prompt_file),
        style=args.style,
        trigger=trigger,
        output_format=args.output_format,
        caption_ext=check_caption_ext(args.caption_ext),
        overwrite=bool(args.overwrite),
        max_new_tokens=_positive("--max-new-tokens", args.max_new_tokens),
        frames=FrameOptions(
            frames=_positive("--frames", args.frames),
            max_size=_positive("--max-size", args.max_size, 28),
            video_max_size=_positive("--video-max-size", args.video_max_size, 28),
        ),
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        status_file=Path(args.status_file) if args.status_file else None,
    )


def _device_and_dtype(opts: CaptionOptions):
    import torch

    from cadence.train.precision import resolve_device, resolve_dtype

    try:
        device = resolve_device(opts.device)
        if opts.dtype == "auto":
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            dtype = resolve_dtype(opts.dtype)
    except (ValueError, RuntimeError) as exc:
        raise CaptionModelError(f"--device {opts.device} / --dtype {opts.dtype}: {exc}") from None
    return device, dtype


class _Status:
    def __init__(self, path: Path | None, tally: Tally) -> None:
        self.path, self.tally = path, tally

    def save(self) -> None:
        if self.path is not None:
            data = asdict(self.tally)
            data["failures"] = data["failures"][-20:]
            atomic_write_text(self.path, json.dumps(data))


def run_captions(opts: CaptionOptions, exiting: bool = False) -> Tally:
    """Caption every file of `opts.folder` that needs it; returns the tally (also on SIGINT, state stopped).
    From the model's load on, SIGINT/SIGTERM are seen between files and the final status is always saved;
    `exiting=True` (the CLI) keeps ignoring signals after a stop, until the process exits."""
    files = list_media(opts.folder)
    tally = Tally(total=len(files))
    status = _Status(opts.status_file, tally)
    if not files:
        raise CaptionOutputError(
            f"{opts.folder} holds no images or videos at its top level (.jpg .jpeg .png .webp .mp4 .mov .webm .mkv)"
        )
    with caption_lock(opts.folder):
        swept = sweep_temporaries(opts.folder, files, opts.caption_ext)
        if swept:
            log.info("removed %d temporary caption files a killed run left in %s", swept, opts.folder)
        sink = open_sink(opts.output_format, opts.folder, opts.caption_ext)
        tally.where = sink.where
        stop = StopFlag("finishing the caption in progress, then stopping")
        try:
            todo = _split_existing(files, sink, opts, tally)
            status.save()
            stopped = bool(todo) and _caption_files(todo, sink, opts, tally, status, stop)
            tally.state = "stopped" if stopped else "finished"
        except KeyboardInterrupt:  # while the model loads (the stop flag is set up after it)
            tally.state = "stopped"
        except BaseException:
            tally.state = "failed"
            raise
        finally:
            sink.close()
            status.save()
            stop.uninstall(keep_ignoring=exiting)  # after the last save: a late signal cannot cut it
    return tally


def _split_existing(files: list[Path], sink, opts: CaptionOptions, tally: Tally) -> list[Path]:
    """The files to caption; the others are counted as kept (or shadowed)."""
    todo = []
    for path in files:
        found = sink.existing(path)
        if isinstance(sink, JsonlSink) and opts.overwrite and sink.shadowed(path):
            tally.shadowed += 1
        elif found is not None and not opts.overwrite:
            tally.kept += 1
            tally.kept_empty += not found.strip()
        else:
            todo.append(path)
            continue
        tally.done += 1
    return todo


def _caption_files(
    todo: list[Path], sink, opts: CaptionOptions, tally: Tally, status: _Status, stop: StopFlag
) -> bool:
    """Caption `todo` in order; True when SIGINT/SIGTERM stopped it before the last file. The signal is seen
    between files, so a caption that was written is always counted (and the one in progress is finished)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    device, dtype = _device_and_dtype(opts)
    model = load_caption_model(opts.model, device, dtype, opts.quantize)  # Ctrl-C here interrupts at once
    stop.install()
    bar = tqdm(total=len(todo), unit="file", desc="captioning", dynamic_ncols=True, file=sys.stderr)
    started = time.monotonic()
    with bar, logging_redirect_tqdm():
        for path in todo:
            if stop.requested:
                return True
            _caption_one(path, model, sink, opts, tally)
            tally.done += 1
            tally.caption_seconds = time.monotonic() - started
            bar.set_postfix(written=tally.written, failed=tally.failed, refresh=False)
            bar.update()
            status.save()
    return False


def _caption_one(path: Path, model, sink, opts: CaptionOptions, tally: Tally) -> None:
    """Write one file's caption and count it, or count why it was skipped."""
    import torch

    try:
        visual = load_visual(path, opts.frames)
        prompt = render_prompt(opts.template, opts.style, visual.is_clip, opts.trigger)
        caption = model.caption(visual, prompt, opts.max_new_tokens)
        text = with_trigger(caption.text, opts.trigger)
        if not text:
            raise MediaError(path, "got an empty caption from the model", "try another prompt or model")
        sink.write(path, text)
        tally.written += 1
        tally.cut += caption.cut
    except (MediaError, CaptionOutputError) as exc:
        _failed(tally, path, str(exc))
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        _failed(tally, path, f"{path}: out of GPU memory; lower --max-size/--video-max-size or --frames")
    except ValueError as exc:  # the processor refuses an input (e.g. an aspect ratio over 200:1)
        _failed(tally, path, f"{path}: the model's processor refused it ({exc})")


def _failed(tally: Tally, path: Path, reason: str) -> None:
    tally.failed += 1
    tally.failures.append(reason)
    log.warning("skipping %s", reason)


def summary(opts: CaptionOptions, tally: Tally, seconds: float) -> list[str]:
    """The closing lines of a run."""
    spent = tally.caption_seconds
    rate = (
        f" ({tally.written / spent:.2f} captions/s after loading the model)"
        if tally.written and spent
        else ""
    )
    head = "stopped" if tally.state == "stopped" else "done"
    lines = [
        f"caption {head}: {tally.done} of {tally.total} files in {opts.folder} in {seconds:.0f} s{rate}: "
        f"{tally.written} written to {tally.where}, {tally.kept} kept, {tally.failed} skipped"
    ]
    if tally.kept:
        empty = f" ({tally.kept_empty} of them empty)" if tally.kept_empty else ""
        lines.append(f"{tally.kept} files already had a caption{empty}; --overwrite replaces them")
    if tally.shadowed:
        lines.append(
            f"{tally.shadowed} files have a same-stem .{opts.caption_ext} caption, which the loader reads before "
            "captions.jsonl: they were not captioned; delete those files or use --output-format text"
        )
    if tally.failed:
        more = f" (and {tally.failed - 5} more, each in a warning above)" if tally.failed > 5 else ""
        lines.append("skipped: " + "; ".join(tally.failures[:5]) + more)
    if tally.cut:
        lines.append(
            f"{tally.cut} captions reached --max-new-tokens {opts.max_new_tokens} and may end mid-sentence"
        )
    if tally.state == "stopped":
        lines.append("run the same command again to caption the rest (finished captions are kept)")
    return lines


def caption_command(args: argparse.Namespace) -> int:
    """CLI entry: 0 when the folder has captions (written or kept), 1 when none was written or kept and files
    failed, 2 for bad options, 130 when stopped by SIGINT."""
    started = time.monotonic()
    try:
        opts = options_from_args(args)
        tally = run_captions(opts, exiting=True)
    except (CaptionOutputError, PromptError, CaptionModelError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:  # before the run began (model still loading)
        sys.stderr.write("stopped before any caption was written\n")
        return STOPPED
    for line in summary(opts, tally, time.monotonic() - started):
        log.info("%s", line)
    if tally.state == "stopped":
        return STOPPED
    return 1 if tally.failed and not (tally.written or tally.kept) else 0
