"""Query crops for reverse image search: the whole photo plus a few product-centred crops.

A shopper's photo shows the product somewhere near the middle, at 15-60% of the
frame, in clutter. The whole-image embedding mixes product and clutter; a crop
around the product is closer to the catalog photo. Crops are cheap guesses (a few
milliseconds on a 96 px thumbnail), embedded in one batch, and the best cosine
over crops is a candidate's global score, so a useless crop costs little.

Crop kinds (`query_crops` returns "whole" first, then DEFAULT_ORDER; the order was
chosen by `benchmarks/offline_eval.py`, whose JSON has the "crop_kinds" sweep):

- ``whole``: the photo as it is;
- ``centre50`` / ``centre70``: centred squares of 50% / 70% of the short side
  (shoppers centre what they photograph);
- ``saliency``: a box around the salient mass — spectral-residual saliency
  (Hou & Zhang, CVPR 2007) on opponent colour channels, times a centre prior,
  boxed by its weighted moments;
- ``peak``: a square of 55% of the short side around the strongest saliency blob.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

CROP_KINDS = ("whole", "saliency", "centre70", "centre50", "peak")
DEFAULT_ORDER: tuple[str, ...] = ("whole", "centre50", "peak", "saliency", "centre70")

_THUMB = 96  # side of the thumbnail the saliency map is computed on
Box = tuple[int, int, int, int]  # left, top, right, bottom in image pixels


def _thumb_gray(image: Image.Image) -> np.ndarray:
    # reducing_gap: a large photo is first shrunk by an integer factor (fast), then resampled
    small = image.resize((_THUMB, _THUMB), Image.Resampling.BILINEAR, reducing_gap=3.0)
    small = small if small.mode == "RGB" else small.convert("RGB")
    arr = np.asarray(small, np.float32)
    # Lab-ish opponent channels: saliency from colour as well as from intensity
    lum = arr.mean(axis=2)
    rg = arr[..., 0] - arr[..., 1]
    by = 0.5 * (arr[..., 0] + arr[..., 1]) - arr[..., 2]
    return np.stack([lum, rg, by])


def spectral_residual(image: Image.Image) -> np.ndarray:
    """Saliency map (_THUMB x _THUMB, float32, max 1), summed over opponent colour channels."""
    total = np.zeros((_THUMB, _THUMB), np.float32)
    for ch in _thumb_gray(image):
        f = np.fft.fft2(ch - ch.mean())
        log_amp = np.log(np.abs(f) + 1e-3).astype(np.float32)
        residual = log_amp - cv2.blur(log_amp, (3, 3))
        sal = np.abs(np.fft.ifft2(np.exp(residual) * np.exp(1j * np.angle(f)))) ** 2
        total += sal.astype(np.float32) / max(float(sal.max()), 1e-9)
    total = cv2.GaussianBlur(total, (0, 0), _THUMB * 0.03)
    return total / max(float(total.max()), 1e-9)


def _centre_prior(sigma: float = 0.3) -> np.ndarray:
    t = (np.arange(_THUMB, dtype=np.float32) + 0.5) / _THUMB - 0.5
    g = np.exp(-(t**2) / (2 * sigma**2))
    return np.outer(g, g)


def _square(cx: float, cy: float, side: float, w: int, h: int) -> Box:
    """A square box (clamped into the image, shifted rather than cut) around a centre."""
    s = round(max(16.0, min(side, float(min(w, h)))))
    x0 = round(min(max(0.0, cx - s / 2), w - s))
    y0 = round(min(max(0.0, cy - s / 2), h - s))
    return x0, y0, x0 + s, y0 + s


def crop_boxes(image: Image.Image, kinds: Sequence[str] = DEFAULT_ORDER) -> list[Box]:
    """Boxes for the given crop kinds, in order (``whole`` is the full frame)."""
    w, h = image.size
    short = min(w, h)
    sal: np.ndarray | None = None
    boxes: list[Box] = []
    for kind in kinds:
        if kind == "whole":
            boxes.append((0, 0, w, h))
        elif kind in ("centre70", "centre50"):
            frac = 0.7 if kind == "centre70" else 0.5
            boxes.append(_square(w / 2, h / 2, frac * short, w, h))
        elif kind in ("saliency", "peak"):
            if sal is None:
                sal = spectral_residual(image) * _centre_prior()
            if kind == "saliency":
                # weighted moments of the top of the map: centre and spread of the salient mass
                wts = np.clip(sal - np.quantile(sal, 0.6), 0, None)
                ys, xs = np.mgrid[0:_THUMB, 0:_THUMB].astype(np.float32) + 0.5
                m = float(wts.sum()) or 1.0
                cx, cy = float((wts * xs).sum() / m), float((wts * ys).sum() / m)
                sx = float(np.sqrt((wts * (xs - cx) ** 2).sum() / m))
                sy = float(np.sqrt((wts * (ys - cy) ** 2).sum() / m))
                side = 2.0 * 2.0 * max(sx * w, sy * h) / _THUMB  # +-2 sigma, in image pixels
                boxes.append(_square(cx * w / _THUMB, cy * h / _THUMB, max(side, 0.35 * short), w, h))
            else:
                py, px = np.unravel_index(int(np.argmax(sal)), sal.shape)
                boxes.append(_square((px + 0.5) * w / _THUMB, (py + 0.5) * h / _THUMB, 0.55 * short, w, h))
        else:
            raise ValueError(f"unknown crop kind {kind!r}; known: {', '.join(CROP_KINDS)}")
    return boxes


def _at_most(img: Image.Image, max_side: int | None) -> Image.Image:
    """Downscale a crop over twice `max_side` to `max_side`: the model resizes to ~224 px anyway,
    and preprocessing a 12-megapixel crop costs more than embedding it. Smaller crops are left
    alone (resizing them here would only duplicate the model's own resize)."""
    if max_side is None or max(img.size) <= 2 * max_side:
        return img
    f = max_side / max(img.size)
    size = (max(1, round(img.width * f)), max(1, round(img.height * f)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def query_boxes(image: Image.Image, kinds: Sequence[str] = DEFAULT_ORDER) -> list[Box]:
    """The whole frame first, then the boxes of `kinds` (source pixels), near-duplicates dropped."""
    kinds = ["whole", *[k for k in kinds if k != "whole"]]
    w, h = image.size
    tol = 0.04 * min(w, h)
    seen: list[Box] = []
    for box in crop_boxes(image, kinds):
        if any(max(abs(a - b) for a, b in zip(box, s, strict=True)) < tol for s in seen):
            continue  # e.g. a saliency box that is the centre crop again: one is enough
        seen.append(box)
    return seen


def crop_images(image: Image.Image, boxes: Sequence[Box], max_side: int | None = 512) -> list[Image.Image]:
    """The crops of `boxes` (source pixels); crops of large photos downscaled to `max_side` (None: never)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    w, h = image.size
    factor = 1
    if max_side is not None and max(image.size) >= 4 * max_side:
        # a large photo: one fast integer box-filter reduction first, keeping >= 2x max_side
        # so that even a half-frame crop still has max_side pixels
        factor = max(image.size) // (2 * max_side)
        image = image.reduce(factor)
    out = []
    for box in boxes:
        if tuple(box) == (0, 0, w, h):
            out.append(_at_most(image, max_side))
        else:
            scaled = tuple(round(v / factor) for v in box)
            out.append(_at_most(image.crop(scaled), max_side))  # type: ignore[arg-type]
    return out


def query_crops(
    image: Image.Image, max_crops: int, kinds: Sequence[str] = DEFAULT_ORDER, max_side: int | None = 512
) -> list[Image.Image]:
    """The whole image first, then up to `max_crops - 1` product-centred crops (duplicates dropped).

    Crops of large photos are downscaled to `max_side` pixels on their long side (None: never).
    """
    if max_crops < 1:
        raise ValueError("max_crops must be at least 1")
    kinds = ["whole", *[k for k in kinds if k != "whole"]][:max_crops]
    return crop_images(image, query_boxes(image, kinds), max_side)


def window_boxes(width: int, height: int) -> list[Box]:
    """Overlapping windows (2 x 2 at 60% and 3 x 3 at 45% of each side): where a product that is
    not the photo's centrepiece may sit (a shelf, an outfit). Cheap to describe by keypoint
    aggregates, so many can be asked."""
    boxes: list[Box] = []
    for n, frac in ((2, 0.6), (3, 0.45)):
        bw, bh = round(width * frac), round(height * frac)
        for i in range(n):
            for j in range(n):
                x0 = round(i * (width - bw) / (n - 1))
                y0 = round(j * (height - bh) / (n - 1))
                boxes.append((x0, y0, x0 + bw, y0 + bh))
    return boxes


def keypoint_cluster_boxes(xy: np.ndarray, width: int, height: int, grid: int = 8, max_boxes: int = 4) -> list[Box]:
    """Boxes around dense clusters of keypoints (connected grid cells holding more keypoints than
    average), largest cluster first: textured products stand out from smooth clutter."""
    if len(xy) < 8:
        return []
    cw, ch = width / grid, height / grid
    gx = np.clip((xy[:, 0] / cw).astype(int), 0, grid - 1)
    gy = np.clip((xy[:, 1] / ch).astype(int), 0, grid - 1)
    counts = np.zeros((grid, grid), np.float32)
    np.add.at(counts, (gy, gx), 1.0)
    dense = (counts >= max(2.0, 1.5 * float(counts[counts > 0].mean()))).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dense, connectivity=8)
    found = []
    for label in range(1, n):
        x, y, w, h, _ = stats[label]
        weight = float(counts[labels == label].sum())
        box = (
            round(max(0.0, (x - 0.5) * cw)),
            round(max(0.0, (y - 0.5) * ch)),
            round(min(float(width), (x + w + 0.5) * cw)),
            round(min(float(height), (y + h + 0.5) * ch)),
        )
        found.append((weight, box))
    found.sort(key=lambda t: -t[0])
    return [box for _, box in found[:max_boxes]]
