"""Cached batch reads per second: how fast the trainer can pull latents + I2V conditioning from disk.

Writes `--items` cache entries with `LatentCache.store` (shapes of a 33-frame 480x832 Wan 2.2 I2V sample
by default: latents [16, 9, 60, 104], condition [20, 9, 60, 104], float32 as the VAE returns them),
then times batches of `--batch-size` `LatentCache.load` calls plus the stack into one batch tensor. The
first pass may come from disk, later passes from the page cache; both are printed.

    .venv/bin/python bench/cache_read_bench.py [--items 32] [--batch-size 1] [--passes 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from cadence.data.cache import LatentCache
from cadence.data.media import MediaItem


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


def read_pass(cache: LatentCache, items: list[MediaItem], batch_size: int) -> tuple[float, float]:
    """(batches/s, MB/s) for one pass over the items."""
    start, nbytes, batches = time.perf_counter(), 0, 0
    for b in range(0, len(items), batch_size):
        entries = [cache.load(it) for it in items[b : b + batch_size]]
        latents = torch.stack([e["latents"] for e in entries])
        cond = torch.stack([e["condition"] for e in entries])
        nbytes += latents.nbytes + cond.nbytes
        batches += 1
    elapsed = time.perf_counter() - start
    return batches / elapsed, nbytes / elapsed / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=33)
    args = parser.parse_args(argv)
    lat_f, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    with tempfile.TemporaryDirectory() as tmp:
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
        entry_mb = cache.path(items[0]).stat().st_size / 1e6
        sys.stdout.write(
            f"{args.items} entries of {entry_mb:.1f} MB (latents [16, {lat_f}, {h}, {w}] + "
            f"condition [20, {lat_f}, {h}, {w}], fp32), batch size {args.batch_size}\n"
        )
        for p in range(args.passes):
            rate, mbps = read_pass(cache, items, args.batch_size)
            sys.stdout.write(
                f"pass {p + 1}: {rate:8.1f} batches/s  {rate * args.batch_size:8.1f} items/s  "
                f"{mbps:8.0f} MB/s\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
