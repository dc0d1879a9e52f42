"""Indexing and caching cost per item for 10 vs 400 clips, in three frame-extraction modes.

Writes `--large` synthetic clips (PyAV, libx264) once; the small set is their first `--small`. For each mode
(chunk, slide, uniform by default) it times `build_dataset_index` (probe + window planning) and a latent
cache fill (`LatentCache.ensure`: shared decode + the tiny Wan 2.2 I2V VAE on the CPU) on both sets, small
and large interleaved in pairs, and prints items/s for each size and the ratio large/small (the median over
the pairs), by wall clock and by this process's CPU time (other jobs on a shared machine stretch wall time
unevenly). For indexing the small set is run large/small times per measurement, so both sides of a pair
cover as many clips (a 10-clip index alone lasts milliseconds, too short to time on a shared machine); a
cache fill of the small set already lasts seconds (the VAE dominates).
A ratio near 1.0 means cost grows linearly with the dataset; below 1 it grows faster. It then times a
resumed fill over the full cache (every window reused, none decoded). Last, the windows of one longer clip
(`slide`, stride 2) decoded through `shared_decode` vs each window decoded alone (`load_pixels`, the bare
way): windows/s of each and their ratio, median of interleaved pairs (`--decode-only` runs just this).
Pairs alternate their order and every ratio is printed with its spread (bench/pairing.py).

    .venv/bin/python bench/index_bench.py [--small 10] [--large 400] [--pairs 3] [--cache-pairs 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairing import Spread  # noqa: E402

from cadence.config.schema import JobConfig, ModelConfig  # noqa: E402
from cadence.data.cache import LatentCache  # noqa: E402
from cadence.data.dataset import build_dataset_index, load_pixels  # noqa: E402
from cadence.data.shared_decode import decode_group, decode_groups  # noqa: E402
from cadence.data.synthetic import write_clip  # noqa: E402
from cadence.models.registry import load_model_adapter  # noqa: E402
from cadence.models.tiny import write_tiny_model  # noqa: E402

MODES = {
    "chunk": {"frame_extraction": "chunk", "num_frames": [9]},
    "slide": {"frame_extraction": "slide", "num_frames": [9], "frame_stride": 8},
    "uniform": {"frame_extraction": "uniform", "num_frames": [9], "frame_sample": 3},
}


def write_clips(folder: Path, n: int, frames: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_clip(folder / f"clip_{i:04d}.mp4", 48, 32, frames, 16, seed=i)
        (folder / f"clip_{i:04d}.txt").write_text(f"clip {i}\n", encoding="utf-8")
    return folder


def job(folder: Path, model: Path, mode: dict) -> JobConfig:
    return JobConfig(
        name="bench",
        training_folder=folder.parent / "out",
        model={"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        datasets=[{"folder_path": folder, "resolution": [64], **mode}],
    )


class Clock:
    """Wall and CPU seconds of this process: on a shared machine other jobs stretch the wall time of one
    side of a pair, not this process's CPU time (torch runs single-threaded here)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, items: int) -> tuple[float, float]:
        return items / (time.perf_counter() - self.wall), items / (time.process_time() - self.cpu)


def index_rate(cfg: JobConfig, times: int = 1) -> tuple[tuple[float, float], int]:
    """((items/s, items per CPU-s), items) of `times` indexings of the dataset."""
    clock, items = Clock(), 0
    for _ in range(times):
        items += len(build_dataset_index(cfg, 16, 4, 16, seed=0).train_items)
    return clock.rates(items), items // times


def cache_rate(cfg: JobConfig, adapter, runs: list[Path], root: Path) -> tuple[float, float]:
    """(items/s, items per CPU-s) of a fill from empty, in a fresh run folder (appended to `runs`)."""
    index = build_dataset_index(cfg, 16, 4, 16, seed=0)
    runs.append(root / f"run{len(runs)}")
    cache = LatentCache(
        adapter.model_id, adapter.arch, True, run_folder=runs[-1], shared_datasets=frozenset()
    )
    clock = Clock()
    report = cache.ensure(index.train_items, adapter)
    rates = clock.rates(report.encoded)
    assert report.encoded == len(index.train_items), report
    return rates


def pairs(measure, small, large, count: int) -> str:
    """Median rates of each side and the median of the per-pair ratios large/small (with spread), wall and
    CPU; the order inside a pair alternates."""
    rows = []
    for index in range(count):
        if index % 2 == 0:
            s, big = measure(small), measure(large)
        else:
            big, s = measure(large), measure(small)
        rows.append((s, big, big[0] / s[0], big[1] / s[1]))
    wall, cpu = Spread.of([r[2] for r in rows]), Spread.of([r[3] for r in rows])
    s = [statistics.median(r[0][k] for r in rows) for k in (0, 1)]
    big = [statistics.median(r[1][k] for r in rows) for k in (0, 1)]
    return (
        f"{s[0]:8.1f}/s ({s[1]:8.1f}/CPU-s) | {big[0]:8.1f}/s ({big[1]:8.1f}/CPU-s) | "
        f"ratio wall {wall.text('.2f')}, CPU {cpu.text('.2f')}"
    )


def shared_vs_alone(root: Path, model: Path, pairs_count: int) -> str:
    """Windows/s decoding a 10 s clip's slide windows through one shared decode vs one decode per window."""
    folder = root / "long"
    folder.mkdir(exist_ok=True)
    write_clip(folder / "long.mp4", 96, 64, 160, 16, seed=1, keyframe_interval=32)
    mode = {"frame_extraction": "slide", "num_frames": [17], "frame_stride": 2}
    items = build_dataset_index(job(folder, model, mode), 16, 4, 16, seed=0).train_items

    def shared() -> float:
        clock = Clock()
        count = sum(1 for group in decode_groups(items) for _ in decode_group(group))
        return clock.rates(count)[0]

    def alone() -> float:
        clock = Clock()
        for item in items:
            load_pixels(item)
        return clock.rates(len(items))[0]

    rows = [
        (shared(), alone()) if k % 2 == 0 else tuple(reversed((alone(), shared())))
        for k in range(pairs_count)
    ]
    ours, bare = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    ratio = Spread.of([r[0] / r[1] for r in rows])
    return f"{len(items)} windows of 17 frames: shared {ours:.1f}/s, alone {bare:.1f}/s, ratio {ratio.text('.2f')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=400)
    parser.add_argument("--frames", type=int, default=33, help="frames per clip (16 fps)")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved small/large index pairs")
    parser.add_argument("--cache-pairs", type=int, default=1, help="interleaved small/large cache fills")
    parser.add_argument("--decode-only", action="store_true", help="only the shared vs per-window decode")
    args = parser.parse_args(argv)
    if args.decode_only:
        with tempfile.TemporaryDirectory() as tmp:
            sys.stdout.write(f"slide decode: {shared_vs_alone(Path(tmp), Path(tmp) / 'no_model', 5)}\n")
        return 0
    torch.set_num_threads(1)
    out = sys.stdout
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        large = write_clips(root / "large", args.large, args.frames)
        small = root / "small"
        small.mkdir()
        for clip in sorted(large.glob("clip_*"))[: 2 * args.small]:  # .mp4 + .txt of the first clips
            (small / clip.name).symlink_to(clip)
        model = write_tiny_model(root / "tiny", "wan22_14b_i2v", seed=0)
        adapter = load_model_adapter(
            ModelConfig(name_or_path=str(model), arch="wan22_14b_i2v"), torch.device("cpu"), torch.float32
        )
        out.write(f"{args.small} vs {args.large} clips of {args.frames} frames (48x32, 16 fps)\n")
        runs: list[Path] = []
        times = {small: max(1, args.large // args.small), large: 1}  # the same number of clips per side
        cache_rate(
            job(small, model, MODES["chunk"]), adapter, runs, root
        )  # warm-up: first VAE calls are slow
        for name, mode in MODES.items():
            cfgs = {folder: job(folder, model, mode) for folder in (small, large)}
            items = {folder: index_rate(cfgs[folder])[1] for folder in (small, large)}
            out.write(
                f"{name:8s} items: {items[small]} from {args.small} clips, {items[large]} from {args.large}\n"
            )
            text = pairs(lambda f, c=cfgs: index_rate(c[f], times[f])[0], small, large, args.pairs)
            out.write(f"{name:8s} index: {text}\n")
            text = pairs(
                lambda f, c=cfgs: cache_rate(c[f], adapter, runs, root), small, large, args.cache_pairs
            )
            out.write(f"{name:8s} cache: {text}\n")
            out.flush()
        # a resumed fill over the last large cache (uniform): every window's entry is checked, none decoded
        index = build_dataset_index(job(large, model, MODES["uniform"]), 16, 4, 16, seed=0)
        cache = LatentCache(
            adapter.model_id, adapter.arch, True, run_folder=runs[-1], shared_datasets=frozenset()
        )
        start = time.perf_counter()
        report = cache.ensure(index.train_items, adapter)
        elapsed = time.perf_counter() - start
        out.write(
            f"resumed fill over a full cache (uniform, {args.large} clips): {report.reused} reused, "
            f"{report.encoded} encoded, {report.reused / elapsed:.0f} items/s\n"
        )
        out.write(f"slide decode: {shared_vs_alone(root, model, 5)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
