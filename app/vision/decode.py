"""Decode untrusted image bytes into an upright RGB Pillow image.

Synchronous and CPU-bound: callers run it in a worker thread (see
`app.vision.embedder.Embedder.decode`). The order of operations is the defence:

1. recognise the format from the header, and only the formats SPEC allows
   (fewer Pillow plugins parse hostile bytes);
2. check the pixel count from the header before any pixel data is decoded
   (decompression bombs: a tiny PNG may declare 20000 x 20000);
3. decode fully with `load()` so a truncated file fails here and not later
   (Pillow's LOAD_TRUNCATED_IMAGES stays off);
4. apply the EXIF orientation, then convert any mode to 8-bit RGB, compositing
   transparency onto white.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageError

# Pillow format names we decode ("JPEG" also covers camera MPO files, which it opens).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "TIFF", "AVIF", "GIF")

CODE_NOT_IMAGE = "invalid_image"
CODE_UNSUPPORTED = "unsupported_image_format"
CODE_CORRUPT = "corrupt_image"
CODE_TOO_MANY_PIXELS = "image_too_large"

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# What Pillow raises on malformed input varies by plugin.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, zlib.error)


def _sniff_other_format(data: bytes) -> str | None:
    """Name a well-known format we do not accept, for a better message than "unrecognised"."""
    head = data[:1024].lstrip()
    lowered = head.lower()
    if lowered.startswith(b"<svg") or (lowered.startswith(b"<?xml") and b"<svg" in lowered):
        return "SVG"
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    if data[:4] == b"%PDF":
        return "PDF"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypheim", b"ftypheis"):
        return "HEIC"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] == b"8BPS":
        return "PSD"
    if data[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow's own (global, higher) limit fired while reading the header.
        match = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(match.group(1))} pixels" if match else "too many pixels"
        raise ImageError(f"image has {count}, over the limit of {max_pixels}", CODE_TOO_MANY_PIXELS) from None
    except UnidentifiedImageError:
        other = _sniff_other_format(data)
        if other == "HTML":
            raise ImageError("not an image (got an HTML page)", CODE_NOT_IMAGE) from None
        if other is not None:
            raise ImageError(f"unsupported image format {other}", CODE_UNSUPPORTED) from None
        raise ImageError("not an image (unrecognised format)", CODE_NOT_IMAGE) from None
    except _DECODE_ERRORS:
        raise ImageError("image is truncated or corrupt", CODE_CORRUPT) from None
    return img


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError("image has no pixels", CODE_CORRUPT)
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(
            f"image has {pixels} pixels ({width}x{height}), over the limit of {max_pixels}",
            CODE_TOO_MANY_PIXELS,
        )


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale to 8-bit by scaling (Pillow's convert would clip at 255)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = (arr.astype(np.uint32) + 128) // 257
    elif img.mode == "I":
        wide = arr.astype(np.int64)
        # 16-bit PNG/TIFF greyscale often arrives as mode I; scale when it uses the range.
        out = (np.clip(wide, 0, 65535) + 128) // 257 if wide.max(initial=0) > 255 else np.clip(wide, 0, 255)
    else:  # "F"
        flt = np.nan_to_num(arr.astype(np.float64))
        out = np.rint(np.clip(flt * 255.0 if flt.max(initial=0.0) <= 1.0 else flt, 0, 255))
    return Image.fromarray(out.astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparent pixels become white."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _high_bit_depth_to_l(img).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...
    except ValueError:
        raise ImageError(f"unsupported colour mode {img.mode}", CODE_UNSUPPORTED) from None


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode `data` (JPEG, PNG, WebP, TIFF, AVIF, GIF first frame) to an upright RGB image.

    Raises ImageError with a message saying what is wrong: not an image, an
    unsupported format, truncated or corrupt, or more than `max_pixels` pixels.

    Pillow's DecompressionBombWarning (images between its global limit and twice
    that) is not turned into an error: warning filters are process-global and
    not thread-safe, and the explicit `max_pixels` check below is the guard.
    """
    if not data:
        raise ImageError("image is empty", CODE_NOT_IMAGE)
    img = _open(data, max_pixels)
    _check_pixels(img, max_pixels)  # header only: nothing decoded yet
    try:
        img.seek(0)  # first frame of GIF / animated WebP / multi-page TIFF
        img.load()
    except Image.DecompressionBombError:
        raise ImageError(f"image has too many pixels, over the limit of {max_pixels}", CODE_TOO_MANY_PIXELS) from None
    except _DECODE_ERRORS:
        raise ImageError("image is truncated or corrupt", CODE_CORRUPT) from None
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy when upright already
    except Exception:  # a broken EXIF block should not reject an image that decoded fine
        pass
    return to_rgb(img)
