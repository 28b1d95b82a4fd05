"""decode_image: formats, orientation, modes, and refusals of hostile or broken bytes."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageError
from app.vision.decode import decode_image

LIMIT = 40_000_000


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _sample(size: tuple[int, int] = (48, 32)) -> Image.Image:
    """Left half red, right half blue: orientation and colour survive lossy codecs."""
    img = Image.new("RGB", size, (220, 20, 20))
    img.paste((20, 20, 220), (size[0] // 2, 0, size[0], size[1]))
    return img


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"quality": 95}),
        ("TIFF", {}),
        ("AVIF", {"quality": 95}),
        ("GIF", {}),
    ],
)
def test_formats(fmt: str, params: dict[str, object]) -> None:
    img = decode_image(_encode(_sample(), fmt, **params), LIMIT)
    assert img.mode == "RGB"
    assert img.size == (48, 32)
    left, right = img.getpixel((5, 16)), img.getpixel((42, 16))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert left[0] > 150 and left[2] < 100, left
    assert right[2] > 150 and right[0] < 100, right


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    img = decode_image(buf.getvalue(), LIMIT)
    assert img.getpixel((8, 8)) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    data = _encode(_sample((48, 32)), "JPEG", quality=95, exif=exif.tobytes())
    img = decode_image(data, LIMIT)
    assert img.size == (32, 48)
    top, bottom = img.getpixel((16, 5)), img.getpixel((16, 42))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 150 and bottom[2] > 150  # left (red) went to the top


def test_rgba_composited_on_white() -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    img.putpixel((0, 0), (0, 0, 255, 255))
    out = decode_image(_encode(img, "PNG"), LIMIT)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency() -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    out = decode_image(_encode(img, "PNG", transparency=0), LIMIT)
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("mode", "fmt"), [("CMYK", "JPEG"), ("CMYK", "TIFF"), ("L", "PNG"), ("1", "PNG"), ("LA", "PNG")]
)
def test_modes_to_rgb(mode: str, fmt: str) -> None:
    out = decode_image(_encode(_sample().convert(mode), fmt), LIMIT)
    assert out.mode == "RGB"
    assert out.size == (48, 32)


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    img = Image.fromarray(arr)  # mode I;16
    for fmt in ("PNG", "TIFF"):
        out = decode_image(_encode(img, fmt), LIMIT)
        value = out.getpixel((4, 4))
        assert isinstance(value, tuple)
        assert value[0] == value[1] == value[2]
        assert 120 <= value[0] <= 135, (fmt, value)


def test_float_mode_tiff() -> None:
    img = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))  # mode F
    out = decode_image(_encode(img, "TIFF"), LIMIT)
    assert out.getpixel((1, 1)) == (128, 128, 128)


def test_truncated_jpeg_fails_clearly() -> None:
    data = _encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG", quality=90)
    with pytest.raises(ImageError) as info:
        decode_image(data[: len(data) // 2], LIMIT)
    assert info.value.message == "image is truncated or corrupt"


def test_truncated_png_fails_clearly() -> None:
    data = _encode(Image.effect_noise((128, 128), 64), "PNG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], LIMIT)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the data is a few bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding() -> None:
    bomb = _png_declaring(20_000, 20_000)
    assert len(bomb) < 200
    started = time.perf_counter()
    with pytest.raises(ImageError) as info:
        decode_image(bomb, LIMIT)
    assert info.value.message == f"image has 400000000 pixels, over the limit of {LIMIT}"
    assert info.value.code == "image_too_large"
    assert time.perf_counter() - started < 0.5  # nothing was allocated or decoded


def test_pixel_limit_below_pillows_own() -> None:
    with pytest.raises(ImageError) as info:
        decode_image(_png_declaring(5000, 5000), 1_000_000)
    assert info.value.message == "image has 25000000 pixels (5000x5000), over the limit of 1000000"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"hello, this is text", "not an image (unrecognised format)"),
        (b"<!DOCTYPE html><html><body>nope</body></html>", "not an image (got an HTML page)"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "unsupported image format SVG"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "unsupported image format SVG"),
        (b"%PDF-1.7\n...", "unsupported image format PDF"),
        (b"", "image is empty"),
    ],
)
def test_not_images(data: bytes, expected: str) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(data, LIMIT)
    assert info.value.message == expected


def test_formats_outside_the_list_are_refused() -> None:
    with pytest.raises(ImageError) as info:
        decode_image(_encode(_sample(), "BMP"), LIMIT)
    assert info.value.message == "unsupported image format BMP"
