"""Image loading edge cases: 16-bit grayscale, transparency and absurd header sizes."""

from __future__ import annotations

import logging
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


def _transparent_right_half(path, mode: str) -> None:
    """96x64, left half opaque green, right half fully transparent but storing red underneath."""
    if mode == "P":  # palette entry 0 (red) is the transparent one, as GIF-style PNGs do
        img = Image.new("P", (96, 64), 0)
        img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
        img.paste(1, (0, 0, 48, 64))
        img.save(path, transparency=0)
    else:
        pixels = np.zeros((64, 96, 4), np.uint8)
        pixels[:, :48] = (0, 255, 0, 255)
        pixels[:, 48:] = (255, 0, 0, 0)
        Image.fromarray(pixels, "RGBA").save(path)


@pytest.mark.parametrize("mode", ["P", "RGBA"])
def test_transparent_pixels_are_composited_onto_white_with_one_warning(tmp_path, caplog, mode):
    """convert("RGB") showed the colour stored under transparent pixels (here red); they become white, and
    loading the file at two bucket sizes warns once."""
    path = tmp_path / f"cutout_{mode}.png"
    _transparent_right_half(path, mode)
    with caplog.at_level(logging.WARNING, logger="cadence.data.images"):
        pixels = load_image(path, 96, 64)
        load_image(path, 48, 32)
    assert (pixels[:, 52:] == 255).all()  # away from the resampled seam
    assert (pixels[:, :44] == (0, 255, 0)).all()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and str(path) in warnings[0] and "white" in warnings[0]


def test_an_opaque_alpha_channel_gives_no_warning(tmp_path, caplog):
    path = tmp_path / "opaque.png"
    pixels = np.full((64, 96, 4), 200, np.uint8)
    pixels[..., 3] = 255  # an alpha channel, opaque everywhere (many screenshots)
    Image.fromarray(pixels, "RGBA").save(path)
    with caplog.at_level(logging.WARNING, logger="cadence.data.images"):
        assert (load_image(path, 96, 64) == 200).all()
    assert not caplog.records
