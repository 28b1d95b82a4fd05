"""Deterministic generator of a product catalog and "in the wild" photos of its products.

The catalog: synthetic products (bottles, cans, boxes, books, shirts, bags, shoes,
mugs, jars, tubes) with patterns, printed text and logos, on plain or near-plain
backgrounds, grouped in *families* of look-alikes: the same design in another
colourway, the same shape and colours with another pattern, or the same design
with a slightly different logo and variant text. Some products are deliberately
low-texture (solid colour, a small print), because real catalogs have them.

The queries: one product pasted at 15-60% of the frame area (its rotated bounding
box) onto clutter (textured backgrounds, random shapes, text, other products),
rotated, perspective-warped, partially occluded, re-lit, blurred, noisy, sometimes
resampled, and JPEG-recompressed. Every query knows its product id.

Nothing here is tuned to a particular matcher; the random ranges are meant to look
like shoppers' phone photos. Run it as a script to write a benchmark to disk:

    .venv/bin/python -m app.samples.wild --products 500 --queries 200 --out bench-results/tmp/wild
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Long side of a rendered product cut-out (pixels); drawn at 2x and downsampled for anti-aliasing.
PRODUCT_SIDE = 480
_SS = 2

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40),
    "orange": (240, 130, 20),
    "yellow": (240, 205, 40),
    "green": (40, 150, 60),
    "teal": (20, 140, 140),
    "blue": (30, 80, 200),
    "navy": (20, 30, 90),
    "purple": (120, 50, 160),
    "pink": (240, 120, 170),
    "brown": (120, 70, 30),
    "beige": (220, 200, 160),
    "black": (25, 25, 28),
    "white": (242, 242, 236),
    "grey": (130, 130, 134),
    "olive": (110, 120, 40),
    "maroon": (110, 20, 40),
    "sky": (120, 190, 240),
    "mint": (150, 220, 180),
}
COLOUR_NAMES = tuple(PALETTE)

# kind -> (width / height of the product canvas, collection)
KINDS: dict[str, tuple[float, str]] = {
    "bottle": (0.42, "drinks"),
    "can": (0.58, "drinks"),
    "jar": (0.8, "pantry"),
    "tube": (0.36, "beauty"),
    "box": (0.95, "pantry"),
    "book": (0.7, "books"),
    "shirt": (1.0, "apparel"),
    "bag": (0.95, "accessories"),
    "shoe": (1.9, "footwear"),
    "mug": (1.15, "home"),
}

PATTERNS = (
    "solid",
    "stripes",
    "dots",
    "checker",
    "plaid",
    "camo",
    "zigzag",
    "floral",
    "gradient",
    "text",
    "grid",
    "noise",
)

LOGO_PRIMS = ("circle", "ring", "triangle", "square", "diamond", "star", "bar", "crescent", "cross")

_SYLLABLES = (
    "ka ro mi lu ve na to sa ri zo pe qua lix dor ban tel mor fin gal hex "
    "nor vik sol tra ven cor pix jun bel ox ar ul em is"
).split()
_WORDS = (
    "Classic Original Fresh Pure Sport Urban Wild Bold Lite Max Zero Prime Royal Citrus Berry "
    "Mint Ocean Forest Sunset Velvet Nova Alpine Cocoa Vanilla Storm Ember Frost Luna Terra"
).split()
_SIZES = ("250ml", "330ml", "500ml", "750ml", "1L", "S", "M", "L", "XL", "100g", "200g", "400g", "12oz")
_SEASONS = ("summer", "winter", "new-in", "sale", "essentials", "gifts", "outdoor")


@dataclass(frozen=True)
class LogoPrim:
    kind: str
    x: float  # centre, relative to the logo box
    y: float
    size: float  # relative to the logo box
    rot: float  # degrees
    colour: int  # 0 = accent, 1 = base, 2 = text colour


@dataclass(frozen=True)
class Design:
    """Everything that determines a product's look; variants are `dataclasses.replace` of it."""

    kind: str
    shape_seed: int
    base: str
    accent: str
    label_colour: str
    text_colour: str
    pattern: str
    pattern_seed: int
    pattern_scale: float
    pattern_angle: float
    brand: str
    word: str
    size_text: str
    logo: tuple[LogoPrim, ...]
    label_style: int  # 0: no label/print, 1: band/rectangle, 2: small badge


@dataclass
class CatalogItem:
    id: str
    image: Image.Image  # RGB catalog photo on a plain background
    metadata: dict[str, Any]
    family: str  # look-alike group: same family = deliberate distractors of each other
    cutout: Image.Image = field(repr=False)  # RGBA product alone, long side PRODUCT_SIDE


@dataclass
class WildQuery:
    id: str
    product_id: str
    image: Image.Image
    params: dict[str, Any]


# --------------------------------------------------------------------------- design sampling


def _jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 18) -> np.ndarray:
    return np.clip(np.array(rgb, np.float32) + rng.integers(-amount, amount + 1, 3), 0, 255)


def _brand(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 4))
    return "".join(str(rng.choice(_SYLLABLES)) for _ in range(n)).capitalize()


def _logo(rng: np.random.Generator) -> tuple[LogoPrim, ...]:
    prims = []
    for _ in range(int(rng.integers(2, 5))):
        prims.append(
            LogoPrim(
                kind=str(rng.choice(LOGO_PRIMS)),
                x=float(rng.uniform(0.25, 0.75)),
                y=float(rng.uniform(0.25, 0.75)),
                size=float(rng.uniform(0.25, 0.6)),
                rot=float(rng.uniform(0, 360)),
                colour=int(rng.integers(0, 3)),
            )
        )
    return tuple(prims)


def _contrasting(colour: str, rng: np.random.Generator, exclude: Sequence[str] = ()) -> str:
    c = np.array(PALETTE[colour], np.float32)
    options = [
        n
        for n in COLOUR_NAMES
        if n not in exclude and n != colour and np.abs(np.array(PALETTE[n], np.float32) - c).sum() > 160
    ]
    return str(rng.choice(options))


def sample_design(rng: np.random.Generator) -> Design:
    kind = str(rng.choice(list(KINDS)))
    base = str(rng.choice(COLOUR_NAMES))
    accent = _contrasting(base, rng)
    label = str(rng.choice(["white", "beige", "black", accent, base]))
    text = _contrasting(label, rng)
    # About a fifth of products are low-texture: solid colour, maybe only a small badge.
    pattern = "solid" if rng.random() < 0.25 else str(rng.choice(PATTERNS[1:]))
    label_style = int(rng.choice([0, 1, 1, 1, 2, 2])) if pattern != "solid" else int(rng.choice([0, 2, 2, 1]))
    return Design(
        kind=kind,
        shape_seed=int(rng.integers(1 << 31)),
        base=base,
        accent=accent,
        label_colour=label,
        text_colour=text,
        pattern=pattern,
        pattern_seed=int(rng.integers(1 << 31)),
        pattern_scale=float(rng.uniform(0.6, 1.6)),
        pattern_angle=float(rng.choice([0.0, 0.0, 45.0, 90.0, float(rng.uniform(0, 180))])),
        brand=_brand(rng),
        word=str(rng.choice(_WORDS)),
        size_text=str(rng.choice(_SIZES)),
        logo=_logo(rng),
        label_style=label_style,
    )


def make_variant(design: Design, how: str, rng: np.random.Generator) -> Design:
    """A look-alike of `design`: 'colour' (other colourway), 'pattern' (same colours), 'logo'."""
    if how == "colour":
        base = _contrasting(design.base, rng) if rng.random() < 0.5 else str(rng.choice(COLOUR_NAMES))
        if base == design.base:
            base = _contrasting(design.base, rng)
        accent = design.accent if design.accent != base else _contrasting(base, rng)
        return replace(design, base=base, accent=accent)
    if how == "pattern":
        others = [p for p in PATTERNS if p != design.pattern]
        return replace(
            design,
            pattern=str(rng.choice(others)),
            pattern_seed=int(rng.integers(1 << 31)),
            pattern_scale=float(rng.uniform(0.6, 1.6)),
        )
    if how == "logo":
        logo = list(design.logo)
        i = int(rng.integers(len(logo)))
        p = logo[i]
        logo[i] = replace(
            p,
            kind=str(rng.choice([k for k in LOGO_PRIMS if k != p.kind])),
            x=float(np.clip(p.x + rng.uniform(-0.15, 0.15), 0.2, 0.8)),
        )
        word = str(rng.choice([w for w in _WORDS if w != design.word]))
        size = str(rng.choice([s for s in _SIZES if s != design.size_text]))
        return replace(design, logo=tuple(logo), word=word, size_text=size)
    raise ValueError(how)


# --------------------------------------------------------------------------- rendering


def _value_noise(h: int, w: int, rng: np.random.Generator, cells: int, octaves: int = 3) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = cells * (2**o)
        grid = rng.random((c + 1, max(2, int(c * w / h) + 1))).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    return np.clip((out - out.min()) / max(1e-6, float(out.max() - out.min())), 0, 1)


def _rotated_coords(h: int, w: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    a = math.radians(angle)
    c, s = np.float32(math.cos(a)), np.float32(math.sin(a))
    return xx * c + yy * s, yy * c - xx * s


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, int(size)))  # type: ignore[return-value]


def _pattern(d: Design, h: int, w: int) -> np.ndarray:
    """Pattern fill (h, w, 3) float32 in the design's base/accent colours."""
    rng = np.random.default_rng(d.pattern_seed)
    base = np.array(PALETTE[d.base], np.float32)
    acc = np.array(PALETTE[d.accent], np.float32)
    period = 46.0 * d.pattern_scale * _SS
    u, v = _rotated_coords(h, w, d.pattern_angle)
    p = d.pattern
    if p == "solid":
        t = np.zeros((h, w), np.float32)
    elif p == "stripes":
        duty = rng.uniform(0.25, 0.6)
        t = ((u / period) % 1.0 < duty).astype(np.float32)
    elif p == "dots":
        r = rng.uniform(0.15, 0.35) * period
        cu, cv = (u % period) - period / 2, (v % period) - period / 2
        t = (cu * cu + cv * cv < r * r).astype(np.float32)
    elif p == "checker":
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif p == "plaid":
        a = ((u / period) % 1.0 < 0.3).astype(np.float32)
        b = ((v / (period * 1.3)) % 1.0 < 0.2).astype(np.float32)
        c = ((u / (period / 3)) % 1.0 < 0.12).astype(np.float32)
        t = np.clip(0.55 * a + 0.55 * b + 0.35 * c, 0, 1)
    elif p == "camo":
        n = _value_noise(h, w, rng, cells=max(2, int(6 / d.pattern_scale)))
        t = np.where(n > 0.62, 1.0, np.where(n > 0.42, 0.45, 0.0)).astype(np.float32)
    elif p == "zigzag":
        amp = period * 0.4
        zz = np.abs(((u / period) % 1.0) - 0.5) * 2 * amp
        t = (((v + zz) / (period * 0.6)) % 1.0 < 0.4).astype(np.float32)
    elif p == "noise":
        t = _value_noise(h, w, rng, cells=max(3, int(14 / d.pattern_scale)), octaves=4)
    elif p == "gradient":
        t = (u - u.min()) / max(1.0, float(u.max() - u.min()))
    elif p in ("floral", "text", "grid"):
        img = Image.new("L", (w, h), 0)
        dr = ImageDraw.Draw(img)
        if p == "floral":
            for _ in range(int(h * w / (period * period) * 0.8)):
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
                r = rng.uniform(0.15, 0.35) * period
                for k in range(5):
                    a = k * 2 * math.pi / 5 + rng.uniform(0, 1)
                    px, py = cx + r * math.cos(a), cy + r * math.sin(a)
                    dr.ellipse((px - r * 0.5, py - r * 0.5, px + r * 0.5, py + r * 0.5), fill=255)
                dr.ellipse((cx - r * 0.3, cy - r * 0.3, cx + r * 0.3, cy + r * 0.3), fill=120)
        elif p == "text":
            font = _font(period * 0.45)
            step_y = int(period * 0.6)
            for row, y in enumerate(range(0, h, step_y)):
                dr.text((-(row * 37) % int(period * 2), y), (d.brand + "  ") * 12, font=font, fill=255)
        else:
            step = int(period * 0.8)
            for x in range(0, w, step):
                dr.line((x, 0, x, h), fill=255, width=max(1, int(period * 0.06)))
            for y in range(0, h, step):
                dr.line((0, y, w, y), fill=255, width=max(1, int(period * 0.06)))
        t = np.asarray(img, np.float32) / 255.0
    else:
        raise ValueError(p)
    return base + (acc - base) * t.astype(np.float32)[..., None]


def _poly_star(cx: float, cy: float, r: float, rot: float, n: int = 5) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        rr = r if k % 2 == 0 else r * 0.45
        a = math.radians(rot) + k * math.pi / n
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _regular(cx: float, cy: float, r: float, rot: float, n: int) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(math.radians(rot) + k * 2 * math.pi / n),
            cy + r * math.sin(math.radians(rot) + k * 2 * math.pi / n),
        )
        for k in range(n)
    ]


def _draw_logo(dr: ImageDraw.ImageDraw, d: Design, box: tuple[float, float, float, float], bg: str) -> None:
    x0, y0, x1, y1 = box
    s = min(x1 - x0, y1 - y0)
    colours = [PALETTE[d.accent], PALETTE[d.base], PALETTE[d.text_colour]]
    for p in d.logo:
        c = colours[p.colour]
        if c == PALETTE[bg]:
            c = PALETTE[d.text_colour]
        cx, cy, r = x0 + p.x * (x1 - x0), y0 + p.y * (y1 - y0), p.size * s / 2
        if p.kind == "circle":
            dr.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c)
        elif p.kind == "ring":
            dr.ellipse((cx - r, cy - r, cx + r, cy + r), outline=c, width=max(2, int(r * 0.3)))
        elif p.kind == "triangle":
            dr.polygon(_regular(cx, cy, r, p.rot, 3), fill=c)
        elif p.kind == "square":
            dr.polygon(_regular(cx, cy, r, p.rot, 4), fill=c)
        elif p.kind == "diamond":
            dr.polygon(_regular(cx, cy, r, 0, 4), fill=c)
        elif p.kind == "star":
            dr.polygon(_poly_star(cx, cy, r, p.rot), fill=c)
        elif p.kind == "bar":
            pts = _regular(cx, cy, r, p.rot, 4)
            q = [
                (cx + (px - cx) * (1 if k % 2 else 0.25), cy + (py - cy) * (1 if k % 2 else 0.25))
                for k, (px, py) in enumerate(pts)
            ]
            dr.polygon(q, fill=c)
        elif p.kind == "crescent":
            dr.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c)
            o = r * 0.45
            a = math.radians(p.rot)
            dr.ellipse(
                (
                    cx - r + o * math.cos(a),
                    cy - r + o * math.sin(a),
                    cx + r + o * math.cos(a),
                    cy + r + o * math.sin(a),
                ),
                fill=PALETTE[bg],
            )
        elif p.kind == "cross":
            w = r * 0.35
            dr.rectangle((cx - r, cy - w, cx + r, cy + w), fill=c)
            dr.rectangle((cx - w, cy - r, cx + w, cy + r), fill=c)


def _fit_text(dr: ImageDraw.ImageDraw, text: str, max_w: float, max_h: float) -> ImageFont.FreeTypeFont:
    size = max(6, int(max_h))
    font = _font(size)
    bbox = dr.textbbox((0, 0), text, font=font)
    tw = bbox[2] - bbox[0]
    if tw > max_w:
        font = _font(max(6, int(size * max_w / tw)))
    return font


def _draw_label(
    dr: ImageDraw.ImageDraw, d: Design, box: tuple[float, float, float, float], rng: np.random.Generator
) -> None:
    """Label/print: a panel (style 1) with logo, brand, variant text and fine print, or a small badge."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if d.label_style == 2:  # small badge: logo + short brand text only
        bw = w * 0.5
        bx0, by0 = x0 + (w - bw) / 2, y0 + h * 0.3
        _draw_logo(dr, d, (bx0, by0, bx0 + bw, by0 + bw * 0.6), d.base)
        font = _fit_text(dr, d.brand, bw, bw * 0.22)
        dr.text(
            (bx0, by0 + bw * 0.65),
            d.brand,
            font=font,
            fill=PALETTE[d.text_colour] if d.text_colour != d.base else PALETTE[d.accent],
        )
        return
    dr.rounded_rectangle(box, radius=min(w, h) * 0.06, fill=PALETTE[d.label_colour])
    pad = 0.06 * w
    logo_h = h * 0.32
    _draw_logo(dr, d, (x0 + pad, y0 + pad, x0 + pad + logo_h, y0 + pad + logo_h), d.label_colour)
    tc = PALETTE[d.text_colour]
    font = _fit_text(dr, d.brand.upper(), w - 3 * pad - logo_h, logo_h * 0.55)
    dr.text((x0 + 2 * pad + logo_h, y0 + pad + logo_h * 0.2), d.brand.upper(), font=font, fill=tc)
    font = _fit_text(dr, d.word, w - 2 * pad, h * 0.16)
    dr.text(
        (x0 + pad, y0 + pad * 1.5 + logo_h),
        d.word,
        font=font,
        fill=PALETTE[d.accent] if d.accent != d.label_colour else tc,
    )
    fine = _font(max(6, h * 0.055))
    y = y0 + pad * 2 + logo_h + h * 0.2
    lines = [f"{d.size_text}  no. {d.shape_seed % 9973}", f"{d.brand} {d.word} {d.kind}".lower()]
    for line in lines:
        if y + h * 0.07 > y1 - pad:
            break
        dr.text((x0 + pad, y), line, font=fine, fill=tc)
        y += h * 0.08
    # a barcode-ish block at the bottom right, from the design's seed so variants share it
    brng = np.random.default_rng(d.shape_seed)
    bx, by = x1 - pad - w * 0.3, y1 - pad - h * 0.14
    if by > y:
        x = bx
        while x < x1 - pad:
            bw = float(brng.uniform(0.004, 0.015)) * w
            dr.rectangle((x, by, x + bw, y1 - pad), fill=tc)
            x += bw + float(brng.uniform(0.004, 0.015)) * w


def render_product(d: Design) -> Image.Image:
    """RGBA cut-out of the product, long side PRODUCT_SIDE."""
    aspect, _ = KINDS[d.kind]
    L = PRODUCT_SIDE * _SS
    W, H = (int(L * aspect), L) if aspect <= 1 else (L, int(L / aspect))
    srng = np.random.default_rng(d.shape_seed)
    mask = Image.new("L", (W, H), 0)
    md = ImageDraw.Draw(mask)
    # per-face brightness map for shading (1 = untouched)
    shade = Image.new("L", (W, H), 128)
    sd = ImageDraw.Draw(shade)
    cyl: tuple[float, float] | None = None  # x-range of a cylindrical body
    label_box: tuple[float, float, float, float]
    k = d.kind
    j = lambda a, b: float(srng.uniform(a, b))  # noqa: E731 - tiny local sampler
    if k == "bottle":
        neck = W * j(0.28, 0.4)
        shoulder = H * j(0.25, 0.38)
        md.rounded_rectangle((0, shoulder, W - 1, H - 1), radius=W * 0.12, fill=255)
        md.ellipse((0, shoulder - W * 0.45, W - 1, shoulder + W * 0.45), fill=255)
        md.rectangle(((W - neck) / 2, H * 0.06, (W + neck) / 2, shoulder), fill=255)
        md.rectangle(((W - neck * 1.15) / 2, 0, (W + neck * 1.15) / 2, H * 0.09), fill=255)
        sd.rectangle(((W - neck * 1.15) / 2, 0, (W + neck * 1.15) / 2, H * 0.09), fill=70)
        cyl = (0, W)
        label_box = (W * 0.06, shoulder + H * 0.12, W * 0.94, H * j(0.8, 0.92))
    elif k == "can":
        e = H * 0.05
        md.rectangle((0, e, W - 1, H - 1 - e), fill=255)
        md.ellipse((0, 0, W - 1, 2 * e), fill=255)
        md.ellipse((0, H - 1 - 2 * e, W - 1, H - 1), fill=255)
        sd.ellipse((W * 0.04, e * 0.2, W * 0.96, e * 1.8), fill=190)
        cyl = (0, W)
        label_box = (W * 0.05, H * 0.16, W * 0.95, H * 0.84)
    elif k == "jar":
        lid = H * j(0.14, 0.2)
        md.rounded_rectangle((0, lid * 0.8, W - 1, H - 1), radius=W * 0.15, fill=255)
        md.rounded_rectangle((W * 0.06, 0, W * 0.94, lid), radius=W * 0.03, fill=255)
        sd.rectangle((W * 0.06, 0, W * 0.94, lid), fill=60)
        cyl = (0, W)
        label_box = (W * 0.08, lid + H * 0.12, W * 0.92, H * 0.86)
    elif k == "tube":
        md.polygon([(0, 0), (W - 1, 0), (W * 0.78, H * 0.9), (W * 0.22, H * 0.9)], fill=255)
        md.rectangle((W * 0.3, H * 0.88, W * 0.7, H - 1), fill=255)
        sd.rectangle((W * 0.3, H * 0.9, W * 0.7, H - 1), fill=70)
        sd.rectangle((0, 0, W, H * 0.04), fill=100)
        cyl = (0, W)
        label_box = (W * 0.1, H * 0.12, W * 0.9, H * 0.7)
    elif k == "box":
        dx, dy = W * j(0.15, 0.25), H * j(0.1, 0.18)
        front = [(0, dy), (W - dx, dy), (W - dx, H - 1), (0, H - 1)]
        md.polygon(front, fill=255)
        md.polygon([(W - dx, dy), (W - 1, 0), (W - 1, H - 1 - dy), (W - dx, H - 1)], fill=255)
        md.polygon([(0, dy), (dx, 0), (W - 1, 0), (W - dx, dy)], fill=255)
        sd.polygon([(W - dx, dy), (W - 1, 0), (W - 1, H - 1 - dy), (W - dx, H - 1)], fill=85)
        sd.polygon([(0, dy), (dx, 0), (W - 1, 0), (W - dx, dy)], fill=165)
        label_box = (W * 0.06, dy + H * 0.08, W - dx - W * 0.06, H * 0.9)
    elif k == "book":
        md.rectangle((0, 0, W - 1, H - 1), fill=255)
        sd.rectangle((0, 0, W * 0.07, H), fill=90)
        label_box = (W * 0.14, H * 0.1, W * 0.94, H * 0.62)
    elif k == "shirt":
        sl = W * j(0.18, 0.24)
        pts = [
            (W * 0.32, 0), (W * 0.42, H * 0.06), (W * 0.58, H * 0.06), (W * 0.68, 0),
            (W - 1, H * 0.12), (W - 1 - sl * 0.4, H * 0.38), (W * 0.8, H * 0.3), (W * 0.8, H - 1),
            (W * 0.2, H - 1), (W * 0.2, H * 0.3), (sl * 0.4, H * 0.38), (0, H * 0.12),
        ]  # fmt: skip
        md.polygon(pts, fill=255)
        sd.ellipse((W * 0.4, -H * 0.04, W * 0.6, H * 0.08), fill=80)
        label_box = (W * 0.3, H * 0.22, W * 0.7, H * 0.62)
    elif k == "bag":
        top = H * j(0.25, 0.35)
        md.polygon([(W * 0.08, top), (W * 0.92, top), (W - 1, H - 1), (0, H - 1)], fill=255)
        hw = W * j(0.05, 0.08)
        md.ellipse((W * 0.25, 0, W * 0.75, top * 2), outline=255, width=int(hw))
        sd.ellipse((W * 0.25, 0, W * 0.75, top * 2), outline=90, width=int(hw))
        label_box = (W * 0.2, top + H * 0.1, W * 0.8, H * 0.85)
    elif k == "shoe":
        toe = W * j(0.2, 0.3)
        upper = [
            (0, H * 0.7), (0, H * 0.25), (W * 0.12, H * 0.05), (W * 0.3, H * 0.05), (W * 0.42, H * 0.3),
            (W - toe, H * 0.45), (W - 1, H * 0.62), (W - 1, H * 0.8),
        ]  # fmt: skip
        md.polygon(upper, fill=255)
        md.rounded_rectangle((0, H * 0.72, W - 1, H - 1), radius=H * 0.1, fill=255)
        sd.rounded_rectangle((0, H * 0.74, W - 1, H - 1), radius=H * 0.1, fill=230)
        sd.ellipse((W * 0.1, H * 0.12, W * 0.3, H * 0.3), fill=60)
        label_box = (W * 0.3, H * 0.35, W * 0.72, H * 0.7)
    elif k == "mug":
        bw = W * 0.78
        md.rounded_rectangle((0, 0, bw, H - 1), radius=W * 0.05, fill=255)
        md.ellipse((bw - W * 0.12, H * 0.2, W - 1, H * 0.75), outline=255, width=int(W * 0.07))
        sd.ellipse((bw - W * 0.12, H * 0.2, W - 1, H * 0.75), outline=100, width=int(W * 0.07))
        cyl = (0, bw)
        label_box = (bw * 0.15, H * 0.2, bw * 0.85, H * 0.8)
    else:
        raise ValueError(k)

    rgb = _pattern(d, H, W)
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    dr = ImageDraw.Draw(img)
    if d.label_style:
        _draw_label(dr, d, label_box, srng)
    elif d.pattern == "solid":
        # even plain products carry some small print
        bw = (label_box[2] - label_box[0]) * 0.35
        font = _fit_text(dr, d.brand, bw, bw * 0.25)
        dr.text((label_box[0], label_box[1]), d.brand, font=font, fill=PALETTE[d.accent])
    arr = np.asarray(img, np.float32)
    s = np.asarray(shade, np.float32) / 128.0
    if cyl is not None:
        x = np.arange(W, dtype=np.float32)
        t = np.clip((x - cyl[0]) / max(1.0, cyl[1] - cyl[0]), 0, 1)
        prof = 0.72 + 0.38 * np.sin(np.pi * t) + 0.25 * np.exp(-(((t - 0.3) / 0.06) ** 2))
        s = s * prof[None, :]
    else:
        yy = np.linspace(1.08, 0.9, H, dtype=np.float32)
        s = s * yy[:, None]
    arr = np.clip(arr * s[..., None], 0, 255)
    m = np.asarray(mask, np.float32)
    # dark outline: mask edge
    edge = np.clip(m - cv2.erode(m, np.ones((5, 5), np.uint8)), 0, 255) / 255.0
    arr = arr * (1 - 0.5 * edge[..., None])
    rgba = np.dstack([arr.astype(np.uint8), m.astype(np.uint8)])
    return Image.fromarray(cv2.resize(rgba, (W // _SS, H // _SS), interpolation=cv2.INTER_AREA), "RGBA")


def _catalog_photo(cutout: Image.Image, rng: np.random.Generator) -> Image.Image:
    side_w = int(rng.choice([320, 384, 448, 512]))
    side_h = int(rng.choice([side_w, side_w, int(side_w * 1.25), int(side_w * 0.8)]))
    bgk = rng.random()
    if bgk < 0.6:
        bg = np.full((side_h, side_w, 3), 255, np.float32)
    elif bgk < 0.8:
        bg = np.full((side_h, side_w, 3), rng.uniform(225, 245), np.float32)
    elif bgk < 0.9:
        bg = np.broadcast_to(_jitter_colour((238, 232, 226), rng, 14), (side_h, side_w, 3)).astype(np.float32)
    else:
        g = np.linspace(rng.uniform(240, 255), rng.uniform(205, 230), side_h, dtype=np.float32)
        bg = np.repeat(np.repeat(g[:, None, None], side_w, 1), 3, 2)
    fill = rng.uniform(0.72, 0.9)
    sc = fill * min(side_w / cutout.width, side_h / cutout.height)
    cw, ch = max(8, int(cutout.width * sc)), max(8, int(cutout.height * sc))
    prod = np.asarray(cutout.resize((cw, ch), Image.Resampling.LANCZOS), np.float32)
    x0, y0 = (side_w - cw) // 2, (side_h - ch) // 2
    a = prod[..., 3:] / 255.0
    if rng.random() < 0.5:  # soft drop shadow
        sh = np.zeros((side_h, side_w), np.float32)
        ox, oy = int(cw * 0.03), int(ch * 0.03)
        ys, xs = slice(max(0, y0 + oy), min(side_h, y0 + oy + ch)), slice(max(0, x0 + ox), min(side_w, x0 + ox + cw))
        sh[ys, xs] = a[: ys.stop - ys.start, : xs.stop - xs.start, 0]
        sh = cv2.GaussianBlur(sh, (0, 0), max(2.0, cw * 0.03))
        bg = bg * (1 - 0.35 * sh[..., None])
    region = bg[y0 : y0 + ch, x0 : x0 + cw]
    bg[y0 : y0 + ch, x0 : x0 + cw] = region * (1 - a) + prod[..., :3] * a
    return Image.fromarray(bg.clip(0, 255).astype(np.uint8))


def _metadata(pid: str, d: Design, rng: np.random.Generator) -> dict[str, Any]:
    _, collection = KINDS[d.kind]
    pattern = "plain" if d.pattern == "solid" else d.pattern
    return {
        "productTitle": f"{d.brand} {d.word} {d.kind}",
        "variantTitle": f"{d.base} / {pattern} / {d.size_text}",
        "brand": d.brand,
        "price": round(float(rng.uniform(3, 250)), 2),
        "productCollections": sorted({collection, str(rng.choice(_SEASONS))}),
        "colour": d.base,
        "pattern": pattern,
        "kind": d.kind,
    }


FLAT_STYLES = ("single_colour", "logo", "graphic")


def sample_flat_design(rng: np.random.Generator) -> tuple[str, Design]:
    """A low-texture product: a single-colour object, a logo on a plain body, or a printed
    graphic (a band with a logo and text) with large plain areas around it."""
    style = str(rng.choice(FLAT_STYLES))
    d = sample_design(rng)
    label_style = {"single_colour": 0, "logo": 2, "graphic": 1}[style]
    return style, replace(d, pattern="solid", label_style=label_style)


def generate_catalog(n_products: int, seed: int = 0, low_texture: int = 0) -> list[CatalogItem]:
    """`n_products` products in look-alike families (1-4 members: colourway, pattern, logo variants),
    then `low_texture` flat products (`sample_flat_design`, families of 1-2 colourways) whose
    metadata says `"texture": "flat"`; the first `n_products` do not depend on `low_texture`."""
    rng = np.random.default_rng([seed, 0xCA7])
    designs: list[tuple[str, Design]] = []
    fam = 0
    while len(designs) < n_products:
        base = sample_design(rng)
        fid = f"f{fam:05d}"
        fam += 1
        designs.append((fid, base))
        size = int(rng.choice([1, 2, 2, 3, 3, 4]))
        for _ in range(size - 1):
            if len(designs) >= n_products:
                break
            # a logo variant needs a visible logo: products without a label get another variant
            how = str(rng.choice(["colour", "colour", "pattern", "logo" if base.label_style else "pattern"]))
            designs.append((fid, make_variant(base, how, rng)))
    flat: dict[int, str] = {}
    hrng = np.random.default_rng([seed, 0xF1A7])
    while len(flat) < low_texture:
        style, base = sample_flat_design(hrng)
        fid = f"f{fam:05d}"
        fam += 1
        for k in range(int(hrng.choice([1, 2, 2]))):
            if len(flat) >= low_texture:
                break
            flat[len(designs)] = style
            designs.append((fid, base if k == 0 else make_variant(base, "colour", hrng)))
    items = []
    for i, (fid, d) in enumerate(designs):
        prng = np.random.default_rng([seed, i, 0xBEEF])  # per item: independent of generation order
        cutout = render_product(d)
        pid = f"p{i:05d}"
        photo = _catalog_photo(cutout, prng)  # before the metadata: both draw from prng
        meta = _metadata(pid, d, prng)
        meta["texture"] = "flat" if i in flat else ("plain" if d.pattern == "solid" else "textured")
        if i in flat:
            meta["flatStyle"] = flat[i]
        items.append(CatalogItem(pid, photo, meta, fid, cutout))
    return items


# --------------------------------------------------------------------------- wild queries


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    kind = int(rng.integers(0, 5))
    c1 = rng.uniform(30, 230, 3).astype(np.float32)
    c2 = rng.uniform(30, 230, 3).astype(np.float32)
    if kind == 0:  # wood / fabric grain
        u, _ = _rotated_coords(h, w, float(rng.uniform(0, 180)))
        n = _value_noise(h, w, rng, cells=4)
        t = 0.5 + 0.5 * np.sin(u / rng.uniform(4, 14) + 8 * n)
    elif kind == 1:  # tiles / table cloth
        p = rng.uniform(25, 90)
        u, v = _rotated_coords(h, w, float(rng.uniform(0, 90)))
        t = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32) * 0.8
        t += 0.2 * _value_noise(h, w, rng, cells=6)
    elif kind == 2:  # room: wall and floor with gradients
        split = int(h * rng.uniform(0.3, 0.7))
        t = np.zeros((h, w), np.float32)
        t[split:] = 1
        t += np.linspace(0, 0.3, w, dtype=np.float32)[None, :] * rng.choice([-1, 1])
        t += 0.15 * _value_noise(h, w, rng, cells=5)
    else:  # blotchy noise (carpet, foliage, shelves out of focus)
        t = _value_noise(h, w, rng, cells=int(rng.integers(3, 12)), octaves=4)
    t = np.clip(t, 0, 1)[..., None]
    return c1 * (1 - t) + c2 * t


def _random_clutter(img: Image.Image, rng: np.random.Generator, n: int) -> None:
    dr = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(n):
        c = tuple(int(x) for x in rng.integers(0, 256, 3))
        x, y = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        r = rng.uniform(0.03, 0.2) * min(w, h)
        k = int(rng.integers(0, 6))
        if k == 0:
            dr.ellipse((x - r, y - r * rng.uniform(0.4, 1), x + r, y + r), fill=c)
        elif k == 1:
            dr.polygon(_regular(x, y, r, float(rng.uniform(0, 360)), int(rng.integers(3, 7))), fill=c)
        elif k == 2:
            dr.line(
                (x, y, x + rng.uniform(-2, 2) * r, y + rng.uniform(-2, 2) * r), fill=c, width=int(rng.integers(2, 12))
            )
        elif k == 3:
            words = " ".join(str(rng.choice(_WORDS)) for _ in range(int(rng.integers(1, 4))))
            dr.text((x, y), words, font=_font(r * 0.5), fill=c)
        elif k == 4:
            dr.rectangle((x - r, y - r * 0.6, x + r, y + r * 0.6), outline=c, width=int(rng.integers(2, 8)))
        else:  # a patterned patch (cushion, magazine, packaging)
            d = sample_design(rng)
            pw, ph = max(8, int(2 * r)), max(8, int(1.4 * r))
            patch = _pattern(replace(d, pattern_scale=d.pattern_scale * 0.5), ph, pw)
            img.paste(Image.fromarray(patch.clip(0, 255).astype(np.uint8)), (int(x - r), int(y - r * 0.7)))


def _perspective_homography(
    w: int, h: int, scale: float, angle: float, persp: float, centre: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """Homography: cut-out pixel coords -> frame coords (scale, rotation, corner jitter, translation)."""
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    jit = rng.uniform(-persp, persp, (4, 2)).astype(np.float32) * np.float32([w, h])
    # tilt-like jitter: one side shrinks more than the other, like a camera off-axis
    dst = (src + jit - np.float32([w / 2, h / 2])) * scale
    a = math.radians(angle)
    rot = np.float32([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    dst = dst @ rot.T + np.float32(centre)
    return cv2.getPerspectiveTransform(src, dst.astype(np.float32))


def _paste_warped(frame: np.ndarray, cutout: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Alpha-composite a warped RGBA cut-out into frame (float32 HxWx3); returns the frame-space alpha."""
    fh, fw = frame.shape[:2]
    alpha = np.zeros((fh, fw), np.float32)
    h, w = cutout.shape[:2]
    corners = cv2.perspectiveTransform(np.float32([[[0, 0]], [[w, 0]], [[w, h]], [[0, h]]]), H).reshape(-1, 2)
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(fw, x1 + 1), min(fh, y1 + 1)
    if x1 <= x0 or y1 <= y0:
        return alpha
    # warp only into the bounding box of the product (much cheaper than the whole frame)
    T = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    warped = cv2.warpPerspective(
        cutout,
        T @ H,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0, 0),
    )
    a = warped[..., 3:].astype(np.float32) / 255.0
    roi = frame[y0:y1, x0:x1]
    roi *= 1 - a
    roi += warped[..., :3].astype(np.float32) * a
    alpha[y0:y1, x0:x1] = a[..., 0]
    return alpha


def _alpha_box(alpha: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(alpha > 0.5)
    if not len(xs):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _downsampled(cutout: Image.Image, target_long: float) -> np.ndarray:
    # resize first (area filter) so the warp is not aliasing a 480 px cut-out into 60 px
    f = min(1.0, max(target_long, 8) * 1.25 / max(cutout.size))
    arr = np.asarray(cutout)
    if f < 1.0:
        size = (max(2, int(cutout.width * f)), max(2, int(cutout.height * f)))
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    return arr


def _soften(frame: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A soft photo: strong motion blur (a moving hand, 9-21 px) or defocus (sigma 2.5-4.5)."""
    if rng.random() < 0.6:
        n = int(rng.integers(9, 22))
        kern = np.zeros((n, n), np.float32)
        kern[n // 2, :] = 1.0
        M = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kern = cv2.warpAffine(kern, M, (n, n))
        return cv2.filter2D(frame, -1, kern / max(1e-6, float(kern.sum()))), f"motion{n}"
    sigma = float(rng.uniform(2.5, 4.5))
    return cv2.GaussianBlur(frame, (0, 0), sigma), f"defocus{sigma:.1f}"


def _camera(
    frame: np.ndarray, rng: np.random.Generator, soft: np.random.Generator | None = None
) -> tuple[Image.Image, int, float, bool]:
    """The phone camera: white balance, exposure, blur, shake, noise, resampling, JPEG.

    With `soft` (its own random stream), the photo is also strongly motion-blurred or out of
    focus. Returns the decoded JPEG, its quality, the Gaussian blur sigma and whether it was resampled.
    """
    fh, fw = frame.shape[:2]
    # camera: white balance, exposure, contrast, gamma, vignetting/illumination gradient
    gains = rng.uniform(0.8, 1.2, 3) * rng.uniform(0.7, 1.2)
    contrast = rng.uniform(0.75, 1.15)
    mean = float(frame.mean()) * gains
    frame = cv2.convertScaleAbs(
        frame * (gains * contrast).astype(np.float32) + (mean * (1 - contrast)).astype(np.float32)
    )
    # gamma through a lookup table: cheaper than a per-pixel power
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** rng.uniform(0.8, 1.25), 0, 255).astype(np.uint8)
    frame = cv2.LUT(frame, lut).astype(np.float32)
    xx = np.arange(fw, dtype=np.float32)[None, :] / fw - 0.5
    yy = np.arange(fh, dtype=np.float32)[:, None] / fh - 0.5
    gdir = rng.uniform(-1, 1, 2).astype(np.float32)
    illum = 1.0 + 0.25 * (xx * gdir[0] + yy * gdir[1])
    vign = 1.0 - np.float32(0.6 * rng.random()) * (xx * xx + yy * yy)
    frame *= (illum * vign)[..., None]
    blur = 0.0
    if rng.random() < 0.6:
        blur = float(rng.uniform(0.4, 1.8))
        frame = cv2.GaussianBlur(frame, (0, 0), blur)
    if rng.random() < 0.15:  # hand shake
        n = int(rng.integers(3, 9))
        kern = np.zeros((n, n), np.float32)
        kern[n // 2, :] = 1.0 / n
        M = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kern = cv2.warpAffine(kern, M, (n, n))
        frame = cv2.filter2D(frame, -1, kern / max(1e-6, kern.sum()))
    if soft is not None:
        frame, _ = _soften(frame, soft)
    frame += rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(rng.uniform(1, 6))
    img = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8))
    resampled = False
    if rng.random() < 0.2:  # a low-resolution camera or a forwarded, downscaled photo
        f = float(rng.uniform(0.45, 0.8))
        img = img.resize((int(fw * f), int(fh * f)), Image.Resampling.BILINEAR).resize(
            (fw, fh), Image.Resampling.BILINEAR
        )
        resampled = True
    quality = int(rng.integers(35, 91))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out, quality, blur, resampled


def make_wild_query(
    item: CatalogItem,
    rng: np.random.Generator,
    others: Sequence[CatalogItem] = (),
    soft: np.random.Generator | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """A phone-photo-like picture of `item` in clutter, and the parameters used; with `soft`
    (a random stream of its own) a motion-blurred or out-of-focus one."""
    fw, fh = [(640, 480), (480, 640), (800, 600), (600, 800), (720, 720)][int(rng.integers(0, 5))]
    frame_img = Image.fromarray(_background(fh, fw, rng).clip(0, 255).astype(np.uint8))
    _random_clutter(frame_img, rng, int(rng.integers(4, 16)))
    frame = np.asarray(frame_img, np.float32).copy()
    if rng.random() < 0.4:  # shallow depth of field on the background
        frame = cv2.GaussianBlur(frame, (0, 0), float(rng.uniform(1.0, 3.0)))

    # other products on the shelf (never the target's own look-alike family: that would be ambiguous)
    pool = [o for o in others if o.family != item.family]
    n_other = int(rng.integers(0, 4)) if pool else 0
    other_ids = []
    for _ in range(n_other):
        o = pool[int(rng.integers(len(pool)))]
        other_ids.append(o.id)
        ow, oh = o.cutout.size
        sc = rng.uniform(0.15, 0.45) * min(fw, fh) / max(ow, oh)
        centre = (float(rng.uniform(0, fw)), float(rng.uniform(0, fh)))
        small = _downsampled(o.cutout, sc * max(ow, oh))
        S = np.diag([ow / small.shape[1], oh / small.shape[0], 1.0])  # small pixels -> cut-out pixels
        Hs = _perspective_homography(ow, oh, sc, float(rng.uniform(-30, 30)), 0.06, centre, rng) @ S
        _paste_warped(frame, small, Hs)

    # the target: bounding-box area 15-60% of the frame
    cw, ch = item.cutout.size
    area_frac = float(rng.uniform(0.15, 0.6))
    angle = float(rng.uniform(-35, 35)) if rng.random() < 0.85 else float(rng.uniform(-90, 90))
    persp = float(rng.uniform(0.0, 0.12))
    a = math.radians(angle)
    rot_w = abs(cw * math.cos(a)) + abs(ch * math.sin(a))
    rot_h = abs(cw * math.sin(a)) + abs(ch * math.cos(a))
    scale = math.sqrt(area_frac * fw * fh / (rot_w * rot_h))
    scale = min(scale, 0.98 * fw / rot_w, 0.98 * fh / rot_h)
    # shoppers roughly centre the product; allow it near the edges, at most slightly cut off
    mx, my = max(0.0, (fw - rot_w * scale) / 2), max(0.0, (fh - rot_h * scale) / 2)
    cx = fw / 2 + float(np.clip(rng.normal(0, 0.5), -1.05, 1.05)) * mx
    cy = fh / 2 + float(np.clip(rng.normal(0, 0.5), -1.05, 1.05)) * my
    Hm = _perspective_homography(cw, ch, scale, angle, persp, (cx, cy), rng)
    small = _downsampled(item.cutout, scale * max(cw, ch))
    S = np.diag([cw / small.shape[1], ch / small.shape[0], 1.0])
    prod = small.astype(np.float32)
    # lighting on the product itself: a highlight or a shadow gradient across it
    if rng.random() < 0.5:
        ph, pw = prod.shape[:2]
        g = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.9, 1.25), pw, dtype=np.float32)
        if rng.random() < 0.5:
            g = g[::-1]
        prod[..., :3] = np.clip(prod[..., :3] * g[None, :, None], 0, 255)
    alpha = _paste_warped(frame, prod.astype(np.uint8), Hm @ S)
    paste_box = _alpha_box(alpha)

    # partial occlusion: a hand/finger-ish blob or an object in front of the product
    occluded = 0.0
    if rng.random() < 0.45:
        ys, xs = np.nonzero(alpha > 0.5)
        if len(xs):
            x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
            bw, bh = x1 - x0, y1 - y0
            occ = Image.new("L", (fw, fh), 0)
            od = ImageDraw.Draw(occ)
            side = int(rng.integers(0, 4))
            r = float(rng.uniform(0.12, 0.3)) * max(bw, bh)
            ex = [x0, x1, rng.uniform(x0, x1), rng.uniform(x0, x1)][side]
            ey = [rng.uniform(y0, y1), rng.uniform(y0, y1), y0, y1][side]
            od.ellipse((ex - r, ey - r * rng.uniform(0.5, 1.5), ex + r, ey + r * rng.uniform(0.5, 1.5)), fill=255)
            om = np.asarray(occ, np.float32)[..., None] / 255.0
            colour = _jitter_colour((205, 160, 130), rng, 30) if rng.random() < 0.6 else rng.uniform(0, 255, 3)
            frame = frame * (1 - om) + colour.astype(np.float32) * om
            occluded = float((om[..., 0] * alpha).sum() / max(1.0, alpha.sum()))

    out, quality, blur, resampled = _camera(frame, rng, soft)
    params = {
        "frame": [fw, fh],
        "soft": soft is not None,
        "area_fraction": round(area_frac, 3),
        "angle": round(angle, 1),
        "perspective": round(persp, 3),
        "occluded_fraction": round(occluded, 3),
        "blur_sigma": round(blur, 2),
        "jpeg_quality": quality,
        "resampled": resampled,
        "other_products": n_other,
        "other_product_ids": other_ids,
        # cut-out pixel -> query pixel; the cut-out sits centred in the catalog photo (scaled)
        "homography_cutout_to_query": (Hm / Hm[2, 2]).round(6).tolist(),
        # where the product was pasted: bounds [x0, y0, x1, y1) of its opaque pixels (before occlusion)
        "paste_box": paste_box,
    }
    return out.convert("RGB"), params


# Layouts of a photo of several products: cells (x0, y0, x1, y1) as fractions of the frame.
_LAYOUTS: dict[int, tuple[tuple[tuple[float, float, float, float], ...], ...]] = {
    2: (((0, 0, 0.5, 1), (0.5, 0, 1, 1)), ((0, 0, 1, 0.5), (0, 0.5, 1, 1))),
    3: (
        ((0, 0, 1 / 3, 1), (1 / 3, 0, 2 / 3, 1), (2 / 3, 0, 1, 1)),
        ((0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0.25, 0.5, 0.75, 1)),
    ),
    4: (((0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)),),
}


def make_multi_query(
    items: Sequence[CatalogItem], rng: np.random.Generator, others: Sequence[CatalogItem] = ()
) -> tuple[Image.Image, dict[str, Any]]:
    """A photo of 2-4 products side by side (a shelf, a desk, an outfit) on clutter.

    Each product fills 35-75% of its own cell of the frame (its rotated bounding box),
    rotated up to 25 degrees, with perspective; then the same camera as `make_wild_query`.
    `params["products"]` lists each product's id and paste box.
    """
    fw, fh = [(800, 600), (960, 720), (720, 720), (640, 800)][int(rng.integers(0, 4))]
    frame_img = Image.fromarray(_background(fh, fw, rng).clip(0, 255).astype(np.uint8))
    _random_clutter(frame_img, rng, int(rng.integers(4, 14)))
    frame = np.asarray(frame_img, np.float32).copy()
    layouts = _LAYOUTS[len(items)]
    cells = layouts[int(rng.integers(len(layouts)))]
    products = []
    for item, (u0, v0, u1, v1) in zip(items, cells, strict=True):
        cw, ch = item.cutout.size
        cell_w, cell_h = (u1 - u0) * fw, (v1 - v0) * fh
        fill = float(rng.uniform(0.35, 0.75))
        angle = float(rng.uniform(-25, 25))
        a = math.radians(angle)
        rot_w = abs(cw * math.cos(a)) + abs(ch * math.sin(a))
        rot_h = abs(cw * math.sin(a)) + abs(ch * math.cos(a))
        scale = math.sqrt(fill * cell_w * cell_h / (rot_w * rot_h))
        scale = min(scale, 0.92 * cell_w / rot_w, 0.92 * cell_h / rot_h)
        mx, my = (cell_w - rot_w * scale) / 2, (cell_h - rot_h * scale) / 2
        cx = (u0 + u1) / 2 * fw + float(rng.uniform(-1, 1)) * mx
        cy = (v0 + v1) / 2 * fh + float(rng.uniform(-1, 1)) * my
        H = _perspective_homography(cw, ch, scale, angle, float(rng.uniform(0.0, 0.08)), (cx, cy), rng)
        small = _downsampled(item.cutout, scale * max(cw, ch))
        S = np.diag([cw / small.shape[1], ch / small.shape[0], 1.0])
        alpha = _paste_warped(frame, small, H @ S)
        products.append({"product_id": item.id, "paste_box": _alpha_box(alpha), "area_fraction": round(fill, 3)})
    if rng.random() < 0.3:  # shallow depth of field: the whole shelf a little soft
        frame = cv2.GaussianBlur(frame, (0, 0), float(rng.uniform(0.5, 1.2)))
    out, quality, blur, resampled = _camera(frame, rng)
    params = {
        "frame": [fw, fh],
        "products": products,
        "blur_sigma": round(blur, 2),
        "jpeg_quality": quality,
        "resampled": resampled,
    }
    return out.convert("RGB"), params


@dataclass
class MultiQuery:
    id: str
    product_ids: list[str]
    image: Image.Image
    params: dict[str, Any]


def generate_multi_queries(catalog: Sequence[CatalogItem], n_queries: int, seed: int = 0) -> list[MultiQuery]:
    """Photos of 2-4 catalog products each (from different look-alike families), on clutter."""
    rng = np.random.default_rng([seed, 0x3A17])
    out = []
    for qi in range(n_queries):
        qrng = np.random.default_rng([seed, qi, 0x3A])
        n = int(rng.integers(2, 5))
        chosen: list[CatalogItem] = []
        families: set[str] = set()
        for pi in rng.permutation(len(catalog)):
            item = catalog[int(pi)]
            if item.family not in families:
                chosen.append(item)
                families.add(item.family)
            if len(chosen) == n:
                break
        if len(chosen) < 2:
            raise ValueError("a multi-product photo needs products of at least two look-alike families")
        img, params = make_multi_query(chosen, qrng, catalog)
        out.append(MultiQuery(f"m{qi:05d}", [c.id for c in chosen], img, params))
    return out


def generate_queries(
    catalog: Sequence[CatalogItem], n_queries: int, seed: int = 0, soft: float = 0.0
) -> list[WildQuery]:
    """Wild photos of `n_queries` catalog products; a `soft` fraction of them motion-blurred or out
    of focus (`params["soft"]`). With `soft` 0 the photos do not depend on it."""
    rng = np.random.default_rng([seed, 0x9E7])
    n = len(catalog)
    picks = rng.permutation(n)[:n_queries] if n_queries <= n else rng.integers(0, n, n_queries)
    out = []
    for qi, pi in enumerate(picks):
        qrng = np.random.default_rng([seed, qi, 0x51])
        item = catalog[int(pi)]
        srng = np.random.default_rng([seed, qi, 0x50F7])
        img, params = make_wild_query(item, qrng, catalog, srng if soft and srng.random() < soft else None)
        out.append(WildQuery(f"q{qi:05d}", item.id, img, params))
    return out


def cutout_from_photo(photo: Image.Image) -> Image.Image:
    """The product alone (RGBA) from a catalog photo: pixels unlike the border colour, cropped.

    Catalog photos show the product on a plain or near-plain background; a photo without one
    (the product fills the frame) is used whole.
    """
    rgb = np.asarray(photo.convert("RGB"))
    h, w = rgb.shape[:2]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    background = np.median(border, axis=0)
    spread = float(np.abs(border - background).max(axis=1).mean())
    mask = (np.abs(rgb.astype(np.int16) - background).max(axis=2) > max(18.0, 3 * spread)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    ys, xs = np.nonzero(mask)
    if len(xs) < 0.05 * h * w:
        return photo.convert("RGBA")
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    rgba = np.dstack([rgb, cv2.GaussianBlur(mask * 255, (0, 0), 1.0)])
    return Image.fromarray(rgba.astype(np.uint8), "RGBA").crop(box)


CATEGORIES = ("textured", "low_texture", "blurred", "small_in_frame", "lookalike_distractors")


def query_categories(query: WildQuery, catalog: Sequence[CatalogItem]) -> list[str]:
    """The benchmark categories a query belongs to (they overlap, except textured vs low_texture):

    textured: a patterned product in a sharp photo; low_texture: a flat or plain product;
    blurred: a soft photo; small_in_frame: under 25% of the frame; lookalike_distractors: the
    product has look-alikes in the catalog."""
    item = next(c for c in catalog if c.id == query.product_id)
    texture = item.metadata.get("texture", "plain" if item.metadata.get("pattern") == "plain" else "textured")
    out = []
    if texture == "textured" and not query.params.get("soft"):
        out.append("textured")
    if texture in ("flat", "plain"):
        out.append("low_texture")
    if query.params.get("soft"):
        out.append("blurred")
    if query.params["area_fraction"] < 0.25:
        out.append("small_in_frame")
    if sum(1 for c in catalog if c.family == item.family) > 1:
        out.append("lookalike_distractors")
    return out


def generate_benchmark(
    n_products: int,
    n_queries: int,
    seed: int = 0,
    out_dir: Path | None = None,
    low_texture: int = 0,
    soft: float = 0.0,
) -> tuple[list[CatalogItem], list[WildQuery]]:
    """Catalog (+ `low_texture` flat products) + queries (a `soft` fraction blurred); with `out_dir`,
    also PNG/JPEG files and catalog.jsonl / queries.jsonl."""
    catalog = generate_catalog(n_products, seed, low_texture)
    queries = generate_queries(catalog, n_queries, seed, soft)
    if out_dir is not None:
        out_dir = Path(out_dir)
        (out_dir / "catalog").mkdir(parents=True, exist_ok=True)
        (out_dir / "queries").mkdir(parents=True, exist_ok=True)
        with (out_dir / "catalog.jsonl").open("w") as f:
            for it in catalog:
                rel = f"catalog/{it.id}.png"
                it.image.save(out_dir / rel)
                f.write(json.dumps({"id": it.id, "image": rel, "family": it.family, "metadata": it.metadata}) + "\n")
        with (out_dir / "queries.jsonl").open("w") as f:
            for q in queries:
                rel = f"queries/{q.id}.jpg"
                q.image.save(out_dir / rel, quality=95)
                f.write(json.dumps({"id": q.id, "image": rel, "product_id": q.product_id, "params": q.params}) + "\n")
    return catalog, queries


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=500)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-results/tmp/wild"))
    args = ap.parse_args()
    t = time.perf_counter()
    catalog, queries = generate_benchmark(args.products, args.queries, args.seed, args.out)
    print(f"{len(catalog)} products, {len(queries)} queries -> {args.out} in {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    _main()
