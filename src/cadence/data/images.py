"""Image probing and loading with PIL (EXIF orientation applied, transparency flattened, converted to RGB)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cadence.data.media import MediaError, require_regular_file

log = logging.getLogger(__name__)

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # rotated by 90/270 degrees: width and height swap
_ADVICE = "re-save it as PNG or JPEG, or remove it"
# Transparent pixels are composited onto white: it is what image viewers and web pages show behind a cut-out
# or logo, so the model learns the picture the user sees. convert("RGB") would instead expose whatever colour
# the transparent pixels store (a palette entry, often black or leftover garbage).
ALPHA_BACKGROUND = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_warned_alpha: set[Path] = set()  # files already warned about, so two bucket sizes give one warning


def _open(path: Path) -> Image.Image:
    require_regular_file(path)  # missing, a FIFO (PIL would block on it) or empty: a clear reason
    try:
        return Image.open(path)
    except PermissionError as exc:
        raise MediaError(path, "cannot be read (permission denied)", "fix its permissions") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise MediaError(path, f"is not a readable image ({exc.__class__.__name__})", _ADVICE) from exc
    except Image.DecompressionBombError as exc:  # a header claiming an absurd size: skip it, keep indexing
        raise MediaError(
            path, f"claims an implausible size ({exc})", "resize it below 178 megapixels"
        ) from exc


def probe_image(path: Path) -> tuple[int, int]:
    """(width, height) as displayed (after EXIF rotation), reading only the header."""
    with _open(path) as img:
        width, height = img.size
        try:
            orientation = img.getexif().get(_ORIENTATION_TAG)
        except Exception:  # noqa: BLE001 - a broken EXIF block only loses the rotation hint
            orientation = None
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if width <= 0 or height <= 0:
        raise MediaError(path, f"has an invalid size {width}x{height}", _ADVICE)
    return width, height


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB in 8 bits. PIL's convert("RGB") clips 16/32-bit integer images ("I;16", "I") at 255 instead of
    scaling them, which turns a 16-bit grayscale PNG nearly white: scale those to 8 bits first."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(values * 255.0 / top), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def _flatten_alpha(
    img: Image.Image, path: Path, background: tuple[int, int, int] = ALPHA_BACKGROUND
) -> Image.Image:
    """`img` with its transparent pixels composited onto `background` (the model sees opaque RGB); warns
    once per file when some pixel actually was transparent."""
    if img.mode not in _ALPHA_MODES and "transparency" not in img.info:
        return img
    if img.mode.startswith(("I", "F")):
        return img  # 16/32-bit: convert("RGBA") would clip the tones that _to_rgb scales; a tRNS key is rare
    rgba = img.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba  # an alpha channel that is opaque everywhere drops nothing
    if path not in _warned_alpha:
        _warned_alpha.add(path)
        colour = "white" if background == ALPHA_BACKGROUND else f"RGB {list(background)}"
        log.warning(
            "%s has transparent pixels; they are composited onto %s (the model trains on opaque RGB). "
            "Flatten the image onto the background you want if %s is wrong.",
            path,
            colour,
            colour,
        )
    plate = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(plate, rgba)


def load_image(
    path: Path, width: int, height: int, background: tuple[int, int, int] = ALPHA_BACKGROUND
) -> np.ndarray:
    """uint8 [height, width, 3]: EXIF-rotated, RGB (transparency onto `background`), cover-resized and
    center-cropped to the bucket."""
    try:
        with _open(path) as img:
            img = _to_rgb(_flatten_alpha(ImageOps.exif_transpose(img), path, background))
            fitted = ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
            return np.array(fitted, dtype=np.uint8)
    except MediaError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(path, f"failed to decode ({exc.__class__.__name__}: {exc})", _ADVICE) from exc
