"""Motion of a run's sample videos per sampled step, read from `{run_dir}/samples/`.

The trainer measures each sample's mp4 as it writes it and stores the statistics in the sample's JSON
sidecar (`motion`, with the mp4's sha256). Two readers:
- `verify=True` (`cadence analyze`): the mp4 files are the truth. Stored statistics are used only while the
  mp4's digest matches; a replaced, re-encoded or older (unmeasured) sample is measured again;
- `verify=False` (live checks during training): the sidecars this trainer just wrote are trusted, and only
  files that changed since the last read are parsed (a new name, or a new inode: sidecars are replaced by
  an atomic rename), so a poll per step costs one `stat` of the folder and a change one listing of it.
  `changed` names the steps whose motion a read changed; the other steps keep their StepMotion objects, so
  the live checks re-judge only what changed (issue 23).

Every sample of a step shares that step's prompts, seeds and control images with every other step (the
sampler guarantees it), so the per-step mean compares like with like.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadence.atomic import atomic_write_text
from cadence.metrics.motion import MOTION_FORMAT, MotionStats, file_digest, mean_stats, measure_video

log = logging.getLogger(__name__)

STAMP_SETTLE_NS = 2_000_000_000  # coarser than any filesystem's mtime granularity we meet (FAT: 2 s)
_SAMPLE_RE = re.compile(r"^(?P<step>\d{9})_(?P<index>\d{2})$")


@dataclass(frozen=True)
class StepMotion:
    """The samples of one step: their mean motion and each sample's own."""

    step: int
    stats: MotionStats
    samples: dict[int, MotionStats] = field(default_factory=dict)


def _stored(sidecar: dict, digest: str | None) -> MotionStats | None:
    """The sidecar's statistics if they are of this format (and, when given, of these exact mp4 bytes)."""
    motion = sidecar.get("motion")
    if not isinstance(motion, dict) or motion.get("format") != MOTION_FORMAT:
        return None
    if digest is not None and motion.get("sha256") != digest:
        return None
    try:
        return MotionStats.from_dict(motion)
    except (KeyError, TypeError, ValueError):
        return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def group_by_step(per_sample: dict[tuple[int, int], MotionStats]) -> dict[int, StepMotion]:
    """(step, sample index) -> stats, grouped into one StepMotion per step (sorted by step)."""
    steps: dict[int, dict[int, MotionStats]] = {}
    for (step, index), stats in per_sample.items():
        steps.setdefault(step, {})[index] = stats
    out = {}
    for step in sorted(steps):
        samples = dict(sorted(steps[step].items()))
        mean = mean_stats(samples.values())
        assert mean is not None
        out[step] = StepMotion(step, mean, samples)
    return out


class SampleMotionReader:
    """Per-step motion of a samples folder; `read()` again picks up what was written since. With `verify`,
    `measured` maps mp4 name -> (sha256, stats) for files whose sidecar did not describe them (a cache a
    caller may keep and pass back in, so an old run's samples are measured once, not at every analysis).

    A read lists the folder once and parses only what is new to it: names it has not seen, and (live) the
    sidecars it has seen without motion yet (the sampler writes a sidecar first, then again with the
    motion), or (verify) every mp4 whose inode, mtime or size changed. Live, a sidecar whose motion was read
    is trusted from then on: the trainer writes each sample's motion once."""

    def __init__(
        self,
        folder: Path | str,
        verify: bool,
        measured: dict[str, tuple[str, MotionStats]] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.verify = verify
        self.measured = dict(measured or {})
        self.remeasured: list[str] = []  # samples whose stored statistics did not describe the mp4
        self._folder_stamp: int | None = None
        self._stamp_settled = False  # the listed folder's mtime is old enough to stand for its content
        self._files: dict[str, tuple[tuple[int, ...], MotionStats | None]] = {}  # name -> (stamp, stats)
        self._samples: dict[int, dict[int, MotionStats]] = {}  # step -> sample index -> stats
        self._listed: set[str] = set()  # the folder's names at the latest listing
        self._waiting: set[str] = set()  # sidecars read without motion (yet)
        self._steps: dict[int, StepMotion] = {}
        self.changed: set[int] = set()  # steps whose motion the latest read() changed (new, other, gone)

    def read(self) -> dict[int, StepMotion]:
        self.changed = set()
        try:
            stamp = self.folder.stat().st_mtime_ns
        except OSError:
            for name in list(self._files):
                self._forget(name)
            self._folder_stamp, self._listed = None, set()
            return self._regroup()
        if stamp == self._folder_stamp and self._stamp_settled and not self.verify:
            return self._steps
        # a stamp younger than the filesystem's timestamp granularity may be shared by a write that follows
        # (coarse kernel clocks, 1-2 s on some filesystems): trusted only once it is older than that
        self._folder_stamp = stamp
        self._stamp_settled = time.time_ns() - stamp > STAMP_SETTLE_NS
        suffix = ".mp4" if self.verify else ".json"
        try:
            listed = set(os.listdir(self.folder))
        except OSError:
            listed = set()
        for name in self._listed - listed:  # files that went away
            self._forget(name)
        if self.verify:
            candidates = {n for n in listed if n.endswith(suffix)}
        else:  # set operations only: the folder of a long run holds thousands of files
            candidates = (listed - self._listed) | self._waiting
        self._listed = listed
        for name in sorted(candidates):
            match = _SAMPLE_RE.match(name[: -len(suffix)]) if name.endswith(suffix) else None
            if match:
                self._update(name, int(match["step"]), int(match["index"]))
        return self._regroup()

    def _update(self, name: str, step: int, index: int) -> None:
        path = self.folder / name
        try:
            info = path.stat()
        except OSError:
            self._forget(name)
            return
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        cached = self._files.get(name)
        if cached is not None and cached[0] == key:
            return
        stats = self._verified(path) if self.verify else _stored(_read_json(path), None)
        self._files[name] = (key, stats)
        if stats is None:
            self._waiting.add(name)
        else:
            self._waiting.discard(name)
        samples = self._samples.setdefault(step, {})
        if stats is None:
            if samples.pop(index, None) is not None:
                self.changed.add(step)
        elif samples.get(index) != stats:
            samples[index] = stats
            self.changed.add(step)

    def _forget(self, name: str) -> None:
        self._files.pop(name, None)
        self._waiting.discard(name)
        match = _SAMPLE_RE.match(os.path.splitext(name)[0])
        if match and self._samples.get(int(match["step"]), {}).pop(int(match["index"]), None) is not None:
            self.changed.add(int(match["step"]))

    def _regroup(self) -> dict[int, StepMotion]:
        """One StepMotion per step with samples, rebuilt for the steps that changed only (in step order)."""
        if not self.changed:
            return self._steps
        newest = next(reversed(self._steps), -1)
        steps = self._steps if min(self.changed) > newest else dict(self._steps)
        for step in sorted(self.changed):
            samples = dict(sorted(self._samples.get(step, {}).items()))
            if not samples:
                steps.pop(step, None)
                self._samples.pop(step, None)
                continue
            mean = mean_stats(samples.values())
            assert mean is not None
            steps[step] = StepMotion(step, mean, samples)
        self._steps = steps if steps is self._steps else dict(sorted(steps.items()))
        return self._steps

    def _verified(self, mp4: Path) -> MotionStats | None:
        """The mp4's statistics: the sidecar's while its digest matches, else measured now."""
        sidecar = _read_json(mp4.with_suffix(".json"))
        try:
            digest = file_digest(mp4)
            stats = _stored(sidecar, digest)
            if stats is not None:
                return stats
            cached = self.measured.get(mp4.name)
            if cached is not None and cached[0] == digest:
                stats = cached[1]
            else:
                fps = sidecar.get("motion_fps", sidecar.get("fps"))  # the rate the reference is measured at
                stats = measure_video(mp4, float(fps) if isinstance(fps, int | float) and fps > 0 else None)
                self.measured[mp4.name] = (digest, stats)
        except Exception as exc:  # noqa: BLE001 - an unreadable sample is left out, never the whole analysis
            log.warning("sample %s left out of the motion statistics (%s: %s)", mp4, type(exc).__name__, exc)
            return None
        if sidecar.get("motion") is not None:
            self.remeasured.append(mp4.name)
        return stats


MEASURED_CACHE = "analysis_motion.json"  # in the run folder, beside analysis.json


def read_sample_motion(run_dir: Path | str) -> tuple[dict[int, StepMotion], list[str]]:
    """Verified per-step motion of a run folder's samples, and the samples whose sidecar described another
    file. Samples measured here (no or stale sidecar numbers) are kept in `analysis_motion.json`, keyed by
    their sha256, so the next analysis reuses them."""
    run_dir = Path(run_dir)
    cache = run_dir / MEASURED_CACHE
    known: dict[str, tuple[str, MotionStats]] = {}
    data = _read_json(cache)
    if data.get("format") == MOTION_FORMAT and isinstance(data.get("samples"), dict):
        for name, entry in data["samples"].items():
            try:
                known[name] = (str(entry["sha256"]), MotionStats.from_dict(entry["stats"]))
            except (KeyError, TypeError, ValueError):
                continue
    reader = SampleMotionReader(run_dir / "samples", verify=True, measured=known)
    steps = reader.read()
    if reader.measured != known:
        samples = {n: {"sha256": d, "stats": st.to_dict()} for n, (d, st) in sorted(reader.measured.items())}
        try:
            atomic_write_text(
                cache, json.dumps({"format": MOTION_FORMAT, "samples": samples}, indent=1) + "\n"
            )
        except OSError as exc:  # a read-only run folder still gets its analysis
            log.warning("could not keep the measured sample motion in %s (%s)", cache, exc)
    return steps, reader.remeasured


def running_peaks(steps: Mapping[int, StepMotion]) -> dict[int, float]:
    """Sampled step -> the highest coarse motion of the sampled steps after 0 up to it (step 0 samples the
    model before training: not the LoRA's own motion)."""
    peaks, peak = {}, 0.0
    for step in sorted(steps):
        if step > 0:
            peak = max(peak, steps[step].stats.coarse)
            peaks[step] = peak
    return peaks


def motion_fields(
    steps: Mapping[int, StepMotion],
    step: int,
    reference: MotionStats | None,
    peaks: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """The metrics-line fields for the samples of `step` (docs/metrics.md, "Sample motion"); `peaks`: the
    steps' `running_peaks`, when the caller keeps them."""
    stats = steps[step].stats
    peak = (running_peaks(steps) if peaks is None else peaks).get(step)
    ref = reference.coarse if reference is not None and reference.coarse > 0 else None
    return {
        "sample_motion_step": step,
        "sample_motion_mean": stats.mean,
        "sample_motion_p95": stats.p95,
        "sample_motion_coarse": stats.coarse,
        "sample_motion_fine": stats.fine,
        "sample_motion_samples": len(steps[step].samples),
        "sample_motion_reference": ref,
        "sample_motion_of_reference": stats.coarse / ref if ref else None,
        "sample_motion_of_peak": stats.coarse / peak if peak else None,
    }
