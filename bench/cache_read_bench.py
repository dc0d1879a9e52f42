"""Cached batch reads: `LatentCache.load` against a bare safetensors load of the same entries.

Writes `--items` cache entries with `LatentCache.store` (shapes of a 33-frame 480x832 Wan 2.2 I2V sample by
default: latents [16, 9, 60, 104], condition [20, 9, 60, 104], float32 as the VAE returns them). What it
compares, batch by batch (`--batch-size` entries stacked into one batch tensor per key):
- ours: `LatentCache.load` per entry (the fingerprint check of the header, then the tensors) + the stack;
- reference: `safetensors.torch.load_file` of the same files + the same stack: the least a trainer can do.
Two passes, each in interleaved pairs (bench/pairing.py; median of the per-pair time ratios with spread):
- warm: the files in the page cache (what a training run sees after its first epoch);
- cold: before every read its files are dropped from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`
  after an fsync), and `mincore` checks that the pages really left memory; on a file system that keeps
  files in memory (tmpfs) or where the call does nothing, the bench says so instead of calling it cold.
  Use `--dir` to put the entries on the disk you train from.

    .venv/bin/python bench/cache_read_bench.py [--items 16] [--batch-size 1] [--pairs 16] [--dir PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import mmap
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairing import Pairs, ratio_line, seconds  # noqa: E402

from cadence.data.cache import LatentCache  # noqa: E402
from cadence.data.media import MediaItem  # noqa: E402


def make_items(folder: Path, n: int, width: int, height: int, frames: int) -> list[MediaItem]:
    items = []
    for i in range(n):
        path = folder / f"clip_{i:03d}.mp4"
        path.write_bytes(b"")  # the cache only needs the name; size/mtime come from the item
        items.append(
            MediaItem(
                path, "video", "", 0, width, height, tuple(range(frames)), 16.0, 1000 + i, i, do_i2v=True
            )
        )
    return items


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: Path) -> float | None:
    """Share of the file's pages in the page cache (mincore on a private mapping), None if unknown."""
    libc_name = ctypes.util.find_library("c")
    size = path.stat().st_size
    if not libc_name or size == 0:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)  # maps; faults nothing in
        try:
            anchor = ctypes.c_char.from_buffer(mapped)
            vec = (ctypes.c_ubyte * pages)()
            ok = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec) == 0
            del anchor
        finally:
            mapped.close()
    return sum(v & 1 for v in vec) / pages if ok else None


def batch_reader(cache: LatentCache, items: list[MediaItem], size: int, ours: bool):
    def read(batch: list[MediaItem]) -> None:
        entries = [cache.load(it) if ours else load_file(str(cache.path(it))) for it in batch]
        for key in ("latents", "condition"):
            torch.stack([e[key] for e in entries])

    return read


def paired(ours, reference, batches: list[list[MediaItem]], cache: LatentCache, cold: bool):
    """(Pairs, mean resident fraction before the reads or None) over the batches, order alternating."""
    mine, theirs, resident = [], [], []
    for index, batch in enumerate(batches):
        times = {}
        for side in ("ours", "reference") if index % 2 == 0 else ("reference", "ours"):
            if cold:
                for item in batch:
                    drop_from_page_cache(cache.path(item))
                    fraction = resident_fraction(cache.path(item))
                    if fraction is not None:
                        resident.append(fraction)
            fn = ours if side == "ours" else reference
            times[side] = seconds(lambda b=batch, f=fn: f(b))
        mine.append(times["ours"])
        theirs.append(times["reference"])
    return Pairs(mine, theirs), (sum(resident) / len(resident) if resident else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=16, help="pairs per pass (batches cycle over the items)")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the entries (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    lat_f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    out = sys.stdout.write
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        items = make_items(Path(tmp), args.items, args.width, args.height, args.frames)
        cache = LatentCache("bench/model", "wan22_14b_i2v", is_i2v=True)
        gen = torch.Generator().manual_seed(0)
        for item in items:
            cache.store(
                item,
                {
                    "latents": torch.randn(16, lat_f, h, w, generator=gen),
                    "condition": torch.randn(20, lat_f, h, w, generator=gen),
                },
            )
        os.sync()  # written back, so the cold pass can drop the pages
        entry_mb = cache.path(items[0]).stat().st_size / 1e6
        out(
            f"{args.items} entries of {entry_mb:.1f} MB (latents [16, {lat_f}, {h}, {w}] + condition "
            f"[20, {lat_f}, {h}, {w}], fp32) in {tmp}, batch size {args.batch_size}\n"
        )
        groups = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
        batches = [groups[k % len(groups)] for k in range(args.pairs + 1)]
        ours = batch_reader(cache, items, args.batch_size, ours=True)
        reference = batch_reader(cache, items, args.batch_size, ours=False)
        for group in groups:  # warm the page cache and Python's caches
            ours(group), reference(group)
        warm, _ = paired(ours, reference, batches[1:], cache, cold=False)
        out(ratio_line("warm (page cache)", warm, goal="<= 1.05") + "\n")
        cold, resident = paired(ours, reference, batches[1:], cache, cold=True)
        if resident is None:
            out("cold: mincore unavailable, cannot check that the pages were dropped; timed anyway:\n")
        elif resident > 0.05:
            out(
                f"cold: CANNOT defeat the page cache here ({resident:.0%} of the pages stayed resident after "
                "POSIX_FADV_DONTNEED; tmpfs or a similar file system?); pass --dir on a disk. Timed anyway:\n"
            )
        else:
            out(f"cold: pages dropped before every read ({resident:.1%} resident on average)\n")
        out(ratio_line("cold (from the disk)", cold) + "\n")
        size = sum(cache.path(it).stat().st_size for b in batches[1:] for it in b)
        for name, pairs in (("warm", warm), ("cold", cold)):
            out(
                f"  {name}: ours {size / sum(pairs.ours) / 1e6:.0f} MB/s, reference {size / sum(pairs.reference) / 1e6:.0f} MB/s\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
