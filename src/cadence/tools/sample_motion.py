"""Motion of a run's sample videos per sampled step, read from `{run_dir}/samples/`.

The trainer measures each sample's mp4 as it writes it and stores the statistics in the sample's JSON
sidecar (`motion`, with the mp4's sha256). Two readers:
- `verify=True` (`cadence analyze`): the mp4 files are the truth. Stored statistics are used only while the
  mp4's digest matches; a replaced, re-encoded or older (unmeasured) sample is measured again;
- `verify=False` (live checks during training): the sidecars this trainer just wrote are trusted, and only
  files that changed since the last read are parsed, so a poll per step costs one `stat` of the folder.

Every sample of a step shares that step's prompts, seeds and control images with every other step (the
sampler guarantees it), so the per-step mean compares like with like.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadence.atomic import atomic_write_text
from cadence.metrics.motion import MOTION_FORMAT, MotionStats, file_digest, mean_stats, measure_video

log = logging.getLogger(__name__)

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
    caller may keep and pass back in, so an old run's samples are measured once, not at every analysis)."""

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
        self._files: dict[str, tuple[tuple[int, int], MotionStats | None]] = {}  # stem -> (stamp, stats)
        self._steps: dict[int, StepMotion] = {}

    def read(self) -> dict[int, StepMotion]:
        try:
            stamp = self.folder.stat().st_mtime_ns
        except OSError:
            return {}
        if stamp == self._folder_stamp and not self.verify:
            return self._steps
        self._folder_stamp = stamp
        per_sample: dict[tuple[int, int], MotionStats] = {}
        for path in sorted(self.folder.glob("*.json" if not self.verify else "*.mp4")):
            match = _SAMPLE_RE.match(path.stem)
            if not match:
                continue
            stats = self._stats(path)
            if stats is not None:
                per_sample[(int(match["step"]), int(match["index"]))] = stats
        self._steps = group_by_step(per_sample)
        return self._steps

    def _stats(self, path: Path) -> MotionStats | None:
        try:
            info = path.stat()
        except OSError:
            return None
        stamp = (info.st_mtime_ns, info.st_size)
        cached = self._files.get(path.stem)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        stats = self._verified(path) if self.verify else _stored(_read_json(path), None)
        self._files[path.stem] = (stamp, stats)
        return stats

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
    steps: Mapping[int, StepMotion], step: int, reference: MotionStats | None
) -> dict[str, Any]:
    """The metrics-line fields for the samples of `step` (docs/metrics.md, "Sample motion")."""
    stats = steps[step].stats
    peak = running_peaks(steps).get(step)
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
