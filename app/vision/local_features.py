"""Local features (RootSIFT) and batched geometric verification for reverse image search.

Catalog images get their features extracted once at ingest and stored in the
`local_features` table (see `serialize`); a query photo gets more keypoints than a
catalog image because its clutter eats part of the budget. Verification matches the
query against a whole candidate pool with one matrix product per chunk of
candidates, keeps matches one-to-one (ratio test inside each candidate, then the
best query keypoint per catalog keypoint), fits a RANSAC homography for candidates
with enough matches, rejects degenerate homographies and counts *distinct* inlier
locations, because flat or repetitive images produce many-to-one matches that
RANSAC happily calls inliers.

Coordinates are in the pixel frame of the image as given (before the internal
downscaling to `max_side`); `image_width`/`image_height` are that image's size.
Descriptors are RootSIFT (Arandjelovic & Zisserman 2012: L1-normalise, square
root) quantised to uint8 — 128 bytes per keypoint, a quarter of float32, and the
dot product of the dequantised vectors is the Hellinger kernel of the SIFT vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

ALGORITHM = "rootsift-rgb-u8"
DESCRIPTOR_DIM = 128
COLOUR_DIM = 3
ROW_BYTES = DESCRIPTOR_DIM + COLOUR_DIM  # stored descriptor row: RootSIFT bytes, then R, G, B
# RootSIFT components of OpenCV SIFT stay below ~0.36 (SIFT clips at 0.2 of the L2 norm);
# 640 maps that range onto uint8 with headroom, and rare outliers saturate harmlessly.
_QUANT_SCALE = 640.0

# Extraction budgets (chosen by benchmarks/offline_eval.py; see its JSON output).
CATALOG_MAX_KEYPOINTS = 256
CATALOG_MAX_SIDE = 384
QUERY_MAX_KEYPOINTS = 768
QUERY_MAX_SIDE = 512


@dataclass(frozen=True)
class LocalFeatures:
    keypoints: np.ndarray  # (n, 2) float32 x, y in the source image's pixels
    descriptors: np.ndarray  # (n, 128) uint8 quantised RootSIFT
    colours: np.ndarray  # (n, 3) uint8 mean RGB of the keypoint's blob (for colourway checks)
    image_width: int
    image_height: int
    algorithm: str = ALGORITHM

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(keypoints, descriptors) as stored: float32 little-endian xy pairs; 131-byte rows."""
        kp = np.ascontiguousarray(self.keypoints, dtype="<f4")
        rows = np.concatenate([self.descriptors, self.colours], axis=1).astype(np.uint8)
        return kp.tobytes(), np.ascontiguousarray(rows).tobytes()

    @classmethod
    def from_bytes(
        cls,
        keypoints: bytes,
        descriptors: bytes,
        image_width: int,
        image_height: int,
        algorithm: str = ALGORITHM,
    ) -> LocalFeatures:
        if algorithm != ALGORITHM:
            raise ValueError(f"unsupported local feature algorithm {algorithm!r} (expected {ALGORITHM!r})")
        if len(keypoints) % 8 or len(descriptors) % ROW_BYTES:
            raise ValueError("stored local features have a truncated keypoint or descriptor row")
        kp = np.frombuffer(keypoints, dtype="<f4").astype(np.float32).reshape(-1, 2)
        rows = np.frombuffer(descriptors, dtype=np.uint8).reshape(-1, ROW_BYTES)
        if kp.shape[0] != rows.shape[0]:
            raise ValueError(f"{kp.shape[0]} keypoints but {rows.shape[0]} descriptors")
        return cls(
            kp, rows[:, :DESCRIPTOR_DIM], rows[:, DESCRIPTOR_DIM:], int(image_width), int(image_height), algorithm
        )


def serialize(features: LocalFeatures) -> dict[str, Any]:
    """Column values for the `local_features` table (everything except product_pk)."""
    kp, desc = features.to_bytes()
    return {
        "algorithm": features.algorithm,
        "keypoint_count": len(features),
        "keypoints": kp,
        "descriptors": desc,
        "image_width": features.image_width,
        "image_height": features.image_height,
    }


def deserialize(row: Mapping[str, Any]) -> LocalFeatures:
    """Inverse of `serialize`; accepts an asyncpg Record or any mapping with those columns."""
    f = LocalFeatures.from_bytes(
        bytes(row["keypoints"]),
        bytes(row["descriptors"]),
        row["image_width"],
        row["image_height"],
        row["algorithm"],
    )
    if len(f) != int(row["keypoint_count"]):
        raise ValueError(f"keypoint_count {row['keypoint_count']} but {len(f)} keypoints stored")
    return f


def _sift(max_keypoints: int) -> cv2.SIFT:
    # A lower contrast threshold than OpenCV's 0.04 keeps keypoints in dim, low-contrast phone photos;
    # the cap then keeps the strongest ones.
    return cv2.SIFT_create(nfeatures=max_keypoints, contrastThreshold=0.02)


def _empty(width: int, height: int) -> LocalFeatures:
    return LocalFeatures(
        np.zeros((0, 2), np.float32),
        np.zeros((0, DESCRIPTOR_DIM), np.uint8),
        np.zeros((0, COLOUR_DIM), np.uint8),
        width,
        height,
    )


def _blob_colours(rgb: np.ndarray, xy: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mean RGB in a box of half-side ~ a quarter of each keypoint's size (its blob's interior).

    Scale-covariant, so a small product in a query and its large catalog photo sample
    the same part of the same blob; box sums come from one integral image.
    """
    h, w = rgb.shape[:2]
    integral = cv2.integral(rgb).astype(np.float64)  # (h+1, w+1, 3)
    r = np.maximum(1.0, 0.25 * sizes)
    x0 = np.clip(np.floor(xy[:, 0] - r), 0, w - 1).astype(np.int64)
    x1 = np.clip(np.ceil(xy[:, 0] + r) + 1, x0 + 1, w).astype(np.int64)
    y0 = np.clip(np.floor(xy[:, 1] - r), 0, h - 1).astype(np.int64)
    y1 = np.clip(np.ceil(xy[:, 1] + r) + 1, y0 + 1, h).astype(np.int64)
    sums = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = ((x1 - x0) * (y1 - y0)).astype(np.float64)[:, None]
    return np.clip(np.rint(sums / area), 0, 255).astype(np.uint8)


def extract_features(image: Image.Image, max_keypoints: int, max_side: int) -> LocalFeatures:
    """RootSIFT keypoints (+ blob colours) of `image` analysed at most `max_side` pixels on its long side."""
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    # a 12-megapixel phone photo: shrink by an integer factor in Pillow first (a cheap box
    # filter), so the RGB array and the area resize below work on a fraction of the pixels
    factor = int(1.0 / scale)
    small = image.reduce(factor) if factor > 1 else image
    rgb = np.asarray(small if small.mode == "RGB" else small.convert("RGB"))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    kps, desc = _sift(max_keypoints).detectAndCompute(gray, None)
    if desc is None or not kps:
        return _empty(width, height)
    # SIFT's nfeatures is approximate (ties at the cut); enforce the budget by response.
    if len(kps) > max_keypoints:
        order = np.argsort([-k.response for k in kps], kind="stable")[:max_keypoints]
        kps = [kps[i] for i in order]
        desc = desc[order]
    xy_an = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
    colours = _blob_colours(rgb, xy_an, np.array([k.size for k in kps], np.float32))
    xy = (xy_an + 0.5) / np.float32(scale) - 0.5  # pixel centres back into the source frame
    d = desc.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-6)
    d = np.sqrt(d)
    q = np.clip(np.rint(d * _QUANT_SCALE), 0, 255).astype(np.uint8)
    return LocalFeatures(xy.astype(np.float32), q, colours, width, height)


def extract_catalog_features(image: Image.Image) -> LocalFeatures:
    return extract_features(image, CATALOG_MAX_KEYPOINTS, CATALOG_MAX_SIDE)


def extract_query_features(image: Image.Image) -> LocalFeatures:
    return extract_features(image, QUERY_MAX_KEYPOINTS, QUERY_MAX_SIDE)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verification:
    inliers: int  # distinct inlier locations (0 when no acceptable homography)
    matches: int  # one-to-one tentative matches that passed the ratio test
    homography_ok: bool  # a non-degenerate homography was found
    score: float  # in [0, 1]: saturating function of the colour-weighted inlier count
    colour_agreement: float = 0.0  # fraction of inliers whose colours agree up to one colour cast
    homography: np.ndarray | None = None  # 3x3 catalog pixels -> query pixels, when ok
    # where the product lies in the query: the catalog keypoints' bounding box projected by the
    # homography, its axis-aligned bounds clipped to the query (x0, y0, x1, y1), when ok
    box: tuple[float, float, float, float] | None = None
    # the box's share of the query photo's area (0 without a box): how prominent the match is
    box_fraction: float = 0.0
    # the RANSAC inliers as (query keypoint index, catalog keypoint index) pairs, when ok
    inlier_pairs: np.ndarray | None = field(default=None, repr=False)

    @property
    def effective_inliers(self) -> float:
        """Inliers weighted by colour agreement: a colourway shares every grey keypoint, not the colours."""
        return self.inliers * self.colour_agreement


NO_VERIFICATION = Verification(0, 0, False, 0.0)


@dataclass(frozen=True)
class VerifyParams:
    ratio: float = 0.8  # Lowe's ratio on descriptor distances, within one candidate
    min_matches: int = 8  # below this, no RANSAC at all
    ransac_threshold: float = 0.012  # reprojection error, fraction of the query's long side
    ransac_iters: int = 2000
    ransac_confidence: float = 0.995
    min_area: float = 0.003  # projected catalog image / query image area, lower bound
    max_area: float = 25.0  # and upper bound (a crop of the product can fill the frame)
    max_anisotropy: float = 8.0  # longest / shortest projected side, relative to the catalog's
    location_grid: float = 0.008  # distinct-location cell, fraction of each image's long side
    score_saturation: float = 25.0  # effective inliers at which `score` reaches ~0.63 (1 - 1/e)
    # Colour: a photo may carry one colour cast (white balance) of up to exp(max_colour_cast) between
    # channels (exp(0.5) = 1.65x); beyond it, and per inlier beyond `colour_tolerance` (log units), colours disagree.
    max_colour_cast: float = 0.5
    colour_tolerance: float = 0.3
    # Catalog keypoints per matrix product. The (query kp, candidates, kp) similarity block is read
    # four times (argmax, best, mask, second best): at 4096 it is ~8 MB for a 500-keypoint query and
    # stays in cache, at 24576 (~47 MB) it did not; verification of 60 candidates took 62 ms median
    # (43 min) against 103 (57) at 24576, identical results (12 wild queries x 8 rounds, load 5).
    chunk_keypoints: int = 4096


DEFAULT_VERIFY = VerifyParams()


def dequantised_descriptors(features: LocalFeatures) -> np.ndarray:
    """(n, 128) float32 unit-norm RootSIFT vectors (dot product = Hellinger kernel)."""
    q = features.descriptors.astype(np.float32)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-6)
    return q




def _cells(xy: np.ndarray, cell: np.ndarray | float) -> np.ndarray:
    """Integer id of the `cell`-sized grid square each point falls in."""
    c = np.floor(xy / np.reshape(cell, (-1, 1))).astype(np.int64)
    return c[:, 0] * 100_003 + c[:, 1]


def _keep_first(group: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Positions of the first row per (group, key); rows are sorted by group, then best-first."""
    _, first = np.unique(group.astype(np.int64) * (1 << 34) + key, return_index=True)
    return np.sort(first)


def _tentative_matches(
    q: np.ndarray,
    query: LocalFeatures,
    cands: Sequence[LocalFeatures],
    p: VerifyParams,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each candidate: (query idx, catalog idx) one-to-one matches passing the ratio test.

    Candidates are padded to the largest keypoint count of their chunk so the similarity
    matrix reshapes to (m, candidates, n) and per-candidate best/second-best are plain
    axis reductions; the padding rows are zero vectors (similarity 0, never a true match).
    One-to-one is enforced on keypoints *and* on locations: text and fine print give
    clusters of keypoints in a few pixels whose many-to-one matches let RANSAC prefer a
    homography that collapses the catalog image onto one spot. All of it is vectorised
    over the candidates of a chunk (no Python loop per candidate).
    """
    m = q.shape[0]
    empty = (np.zeros(0, np.intp), np.zeros(0, np.intp))
    out: list[tuple[np.ndarray, np.ndarray]] = [empty] * len(cands)
    ratio2 = p.ratio * p.ratio
    q_cell = p.location_grid * max(query.image_width, query.image_height)
    start = 0
    while start < len(cands):
        n_max = 2
        stop = start
        while stop < len(cands):
            n_next = max(n_max, len(cands[stop]))
            if stop > start and n_next * (stop - start + 1) > p.chunk_keypoints:
                break
            n_max = n_next
            stop += 1
        chunk = cands[start:stop]
        k = len(chunk)
        stacked = np.zeros((k, n_max, DESCRIPTOR_DIM), np.float32)
        kp = np.zeros((k, n_max, 2), np.float32)
        for i, c in enumerate(chunk):
            stacked[i, : len(c)] = c.descriptors
            kp[i, : len(c)] = c.keypoints
        stacked *= np.float32(1.0 / _QUANT_SCALE)  # dequantise: rows are ~unit norm again
        sim = (q @ stacked.reshape(k * n_max, DESCRIPTOR_DIM).T).reshape(m, k, n_max)
        best = sim.argmax(axis=2)  # (m, k)
        s1 = np.take_along_axis(sim, best[..., None], axis=2)[..., 0]
        np.put_along_axis(sim, best[..., None], -2.0, axis=2)
        s2 = sim.max(axis=2)
        # squared distances of unit vectors: d^2 = 2 - 2 s; Lowe: d1 < ratio * d2
        qi, ci = np.nonzero((1.0 - s1) < ratio2 * (1.0 - s2))
        cj = best[qi, ci]
        order = np.lexsort((-s1[qi, ci], ci))  # by candidate, then best match first
        qi, ci, cj = qi[order], ci[order], cj[order]
        # best-first greedy: one query keypoint per catalog keypoint, then one match per
        # query location cell and per catalog location cell, within each candidate
        keep = _keep_first(ci, cj)
        qi, ci, cj = qi[keep], ci[keep], cj[keep]
        keep = _keep_first(ci, _cells(query.keypoints[qi], q_cell))
        qi, ci, cj = qi[keep], ci[keep], cj[keep]
        c_cell = np.array([p.location_grid * max(c.image_width, c.image_height) for c in chunk], np.float32)
        keep = _keep_first(ci, _cells(kp[ci, cj], c_cell[ci]))
        qi, ci, cj = qi[keep], ci[keep], cj[keep]
        bounds = np.searchsorted(ci, np.arange(k + 1))
        for local in range(k):
            lo, hi = bounds[local], bounds[local + 1]
            if hi > lo:
                out[start + local] = (qi[lo:hi], cj[lo:hi])
        start = stop
    return out


def _quad_ok(quad: np.ndarray, w_h: tuple[int, int], query_area: float, p: VerifyParams) -> bool:
    """The catalog image's corners projected into the query must be a sane, convex, unflipped quad."""
    # orientation of every corner turn: image corners go clockwise in pixel coordinates (y down)
    v = np.roll(quad, -1, axis=0) - quad
    cross = v[:, 0] * np.roll(v, -1, axis=0)[:, 1] - v[:, 1] * np.roll(v, -1, axis=0)[:, 0]
    if not np.all(cross > 0):  # non-convex, self-intersecting or mirrored
        return False
    x, y = quad[:, 0], quad[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if not (p.min_area * query_area <= area <= p.max_area * query_area):
        return False
    sides = np.linalg.norm(v, axis=1)
    w, h = w_h
    rel = sides / np.array([w, h, w, h], np.float64)  # scale of each side relative to the original
    return bool(rel.min() > 0 and rel.max() / rel.min() <= p.max_anisotropy)


def homography_is_plausible(
    H: np.ndarray | None,
    catalog_size: tuple[int, int],
    query_size: tuple[int, int],
    p: VerifyParams = DEFAULT_VERIFY,
) -> bool:
    """Whether a catalog->query homography can be a real view of the catalog image.

    Rejects collapsed or mirrored maps, corners behind the camera or extreme
    foreshortening, non-convex or self-intersecting projected quads, tiny or huge
    projected areas and extreme anisotropy: the shapes RANSAC produces from
    many-to-one or chance matches.
    """
    if H is None or H.shape != (3, 3) or not np.all(np.isfinite(H)) or abs(H[2, 2]) < 1e-12:
        return False
    H = H / H[2, 2]
    if np.linalg.det(H[:2, :2]) <= 1e-9:  # collapsed or mirrored
        return False
    w, h = catalog_size
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64)
    proj = corners @ H.T
    z = proj[:, 2]
    # every corner in front of the camera, and no extreme perspective foreshortening
    if np.any(z <= 1e-6) or z.max() / z.min() > 4.0:
        return False
    quad = proj[:, :2] / z[:, None]
    return _quad_ok(quad, (w, h), float(query_size[0] * query_size[1]), p)


def projected_box(
    H: np.ndarray, catalog: LocalFeatures, query_size: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """The catalog product's extent in the query: the bounding box of the catalog keypoints
    (catalog photos show the product on a plain background, so keypoints outline the product,
    not the photo's margins) mapped by `H`, as axis-aligned bounds clipped to the query frame."""
    if len(catalog) == 0:
        return None
    x0, y0 = catalog.keypoints.min(axis=0)
    x1, y1 = catalog.keypoints.max(axis=0)
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]], np.float64) @ H.T
    if np.any(corners[:, 2] <= 1e-9):
        return None
    xy = corners[:, :2] / corners[:, 2:]
    w, h = query_size
    bx0, by0 = np.clip(xy.min(axis=0), 0, [w, h])
    bx1, by1 = np.clip(xy.max(axis=0), 0, [w, h])
    if bx1 - bx0 < 1 or by1 - by0 < 1:
        return None
    return float(bx0), float(by0), float(bx1), float(by1)


def _area_fraction(box: tuple[float, float, float, float] | None, query: LocalFeatures) -> float:
    if box is None:
        return 0.0
    return (box[2] - box[0]) * (box[3] - box[1]) / max(1.0, float(query.image_width * query.image_height))


def _distinct(xy: np.ndarray, cell: float) -> int:
    return int(np.unique(_cells(xy, cell)).size) if len(xy) else 0


def inlier_score(inliers: float, saturation: float) -> float:
    """Saturating map of a (colour-weighted) distinct-inlier count to [0, 1)."""
    return 1.0 - math.exp(-max(0.0, inliers) / max(saturation, 1e-6))


def colour_agreement(query_rgb: np.ndarray, catalog_rgb: np.ndarray, p: VerifyParams = DEFAULT_VERIFY) -> float:
    """Fraction of matched keypoints whose colours agree once one shared colour cast is allowed for.

    Works on chromaticity in log space (per-keypoint brightness removed, since shadows and
    highlights change all channels together); the shared cast is the median chromatic shift,
    clipped to what a white-balance difference can plausibly do.
    """
    if len(query_rgb) == 0:
        return 0.0
    d = np.log(query_rgb.astype(np.float32) + 8.0) - np.log(catalog_rgb.astype(np.float32) + 8.0)
    chroma = d - d.mean(axis=1, keepdims=True)
    cast = np.clip(np.median(chroma, axis=0), -p.max_colour_cast, p.max_colour_cast)
    resid = np.abs(chroma - cast).max(axis=1)
    return float(np.mean(resid < p.colour_tolerance))


def verify_candidates(
    query: LocalFeatures, candidates: Sequence[LocalFeatures], params: VerifyParams = DEFAULT_VERIFY
) -> list[Verification]:
    """Geometric verification of `query` against each candidate, in the candidates' order."""
    if len(query) < params.min_matches or not candidates:
        return [NO_VERIFICATION] * len(candidates)
    q = dequantised_descriptors(query)
    # Chunks are padded to their largest candidate: grouping candidates of similar keypoint
    # counts wastes less of the matrix product (~30% less work at 60 candidates).
    order = sorted(range(len(candidates)), key=lambda i: len(candidates[i]))
    sorted_matches = _tentative_matches(q, query, [candidates[i] for i in order], params)
    matches: list[tuple[np.ndarray, np.ndarray]] = [sorted_matches[0]] * len(candidates)
    for position, i in enumerate(order):
        matches[i] = sorted_matches[position]
    q_long = float(max(query.image_width, query.image_height))
    thresh = params.ransac_threshold * q_long
    results: list[Verification] = []
    for cand, (qi, ci) in zip(candidates, matches, strict=True):
        n = len(qi)
        if n < params.min_matches:
            results.append(Verification(0, n, False, 0.0))
            continue
        src = cand.keypoints[ci].astype(np.float32)
        dst = query.keypoints[qi].astype(np.float32)
        H, mask = cv2.findHomography(
            src,
            dst,
            cv2.USAC_MAGSAC,
            thresh,
            maxIters=params.ransac_iters,
            confidence=params.ransac_confidence,
        )
        if mask is None or not homography_is_plausible(
            H, (cand.image_width, cand.image_height), (query.image_width, query.image_height), params
        ):
            results.append(Verification(0, n, False, 0.0))
            continue
        inl = mask.ravel().astype(bool)
        c_cell = params.location_grid * max(cand.image_width, cand.image_height)
        # distinct on both sides: many query keypoints on one catalog spot (or vice versa) count once
        distinct = min(_distinct(dst[inl], params.location_grid * q_long), _distinct(src[inl], c_cell))
        if distinct < 4:  # a homography needs four points; fewer distinct ones is a degenerate fit
            results.append(Verification(0, n, False, 0.0))
            continue
        agree = colour_agreement(query.colours[qi[inl]], cand.colours[ci[inl]], params)
        score = inlier_score(distinct * agree, params.score_saturation)
        H = H / H[2, 2]
        box = projected_box(H, cand, (query.image_width, query.image_height))
        results.append(
            Verification(
                distinct,
                n,
                True,
                score,
                colour_agreement=agree,
                homography=H,
                box=box,
                box_fraction=_area_fraction(box, query),
                inlier_pairs=np.stack([qi[inl], ci[inl]], axis=1),
            )
        )
    return results
