"""Final ranking of reverse image search candidates: global similarity + geometric verification.

Pure logic: no SQL, no framework, no OpenCV. The search pipeline gathers a
candidate pool (the union of each query crop's nearest neighbours, each candidate
carrying its best cosine over the crops), verifies it with local features
(`app.vision.local_features.verify_candidates`), and hands the result here.

The combination, with `g` the candidate's global cosine and `n` its distinct inlier count
weighted by colour agreement (a colourway matches every grey keypoint, not the colours):

    final = g + verify_weight * v(n),  v(n) = 1 - exp(-max(0, n - min_inliers) / inlier_saturation)

- below `min_inliers` verification says nothing (unrelated images reach a handful
  of chance inliers), so low-texture products are ordered by the global model alone;
- above it the bonus grows quickly and saturates, so a clearly verified product
  beats any unverified one, while among look-alikes that verify alike (colourways
  share every keypoint in grey) the global score still decides;
- `final` is monotone in both `g` and `n`: higher is more similar.

The defaults come from `benchmarks/offline_eval.py` (its JSON records the sweep).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class VerificationLike(Protocol):
    """What rerank needs from `app.vision.local_features.Verification`."""

    @property
    def inliers(self) -> int: ...

    @property
    def homography_ok(self) -> bool: ...

    @property
    def colour_agreement(self) -> float: ...


@dataclass(frozen=True)
class RerankParams:
    # Pool: candidates fetched from the ANN index per query crop; the union is verified.
    pool_size: int = 60
    n_crops: int = 4
    # Score combination.
    verify_weight: float = 1.0
    min_inliers: int = 6
    inlier_saturation: float = 8.0
    # How many of the merged pool's best (by global score) to verify; 0 = all. A cap on the
    # matching cost, which is linear in it (~100 candidates per 60 ms on 2 cores); 4 crops x 60
    # merge to ~110 candidates (p50) and at most ~190 on the benchmark.
    verify_top: int = 150

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.n_crops < 1:
            raise ValueError("pool_size and n_crops must be at least 1")
        if self.verify_weight < 0 or self.inlier_saturation <= 0 or self.min_inliers < 0:
            raise ValueError("verify_weight and min_inliers must be >= 0, inlier_saturation > 0")


DEFAULT_PARAMS = RerankParams()


@dataclass(frozen=True)
class Candidate:
    product_key: Hashable
    global_score: float  # cosine similarity, best over the query crops
    verification: VerificationLike | None = None  # None: not verified (no features, or not in verify_top)


def verification_bonus(inliers: float, params: RerankParams = DEFAULT_PARAMS) -> float:
    """v(n) in [0, 1): zero up to `min_inliers`, then saturating."""
    excess = inliers - params.min_inliers
    if excess <= 0:
        return 0.0
    return 1.0 - math.exp(-excess / params.inlier_saturation)


def final_score(candidate: Candidate, params: RerankParams = DEFAULT_PARAMS) -> float:
    v = candidate.verification
    if v is None or not v.homography_ok:
        return float(candidate.global_score)
    # inliers whose colours disagree (a colourway of the product) do not count
    bonus = verification_bonus(v.inliers * v.colour_agreement, params)
    return float(candidate.global_score) + params.verify_weight * bonus


def combine_scores(
    candidates: Iterable[Candidate], params: RerankParams = DEFAULT_PARAMS
) -> list[tuple[Hashable, float]]:
    """(product_key, final score) best-first; ties broken by global score, then input order."""
    scored = [(final_score(c, params), c.global_score, i, c.product_key) for i, c in enumerate(candidates)]
    scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [(key, score) for score, _, _, key in scored]


def merge_crop_neighbours(per_crop: Sequence[Iterable[tuple[Hashable, float]]]) -> dict[Hashable, float]:
    """Union of each crop's (product_key, cosine) neighbours; a product keeps its best cosine."""
    best: dict[Hashable, float] = {}
    for neighbours in per_crop:
        for key, score in neighbours:
            if key not in best or score > best[key]:
                best[key] = float(score)
    return best
