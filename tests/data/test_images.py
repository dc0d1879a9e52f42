"""Image loading edge cases: 16-bit grayscale and absurd header sizes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cadence.data.images import load_image, probe_image
from cadence.data.media import MediaError


def test_16_bit_grayscale_keeps_its_tones(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)  # mode I;16
    assert Image.open(path).mode.startswith("I")
    pixels = load_image(path, 64, 32)
    assert pixels.shape == (32, 64, 3) and abs(float(pixels.mean()) - 127.5) < 2
    assert pixels[:, 0].max() < 5 and pixels[:, -1].min() > 250  # black stays black, white stays white


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (one tiny compressed row): a decompression-bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def test_implausible_size_is_a_skippable_media_error(tmp_path):
    path = tmp_path / "huge.png"
    _png_header_only(path, 40000, 20000)
    with pytest.raises(MediaError, match="implausible size"):
        probe_image(path)
