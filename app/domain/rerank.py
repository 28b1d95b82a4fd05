"""Final ranking of reverse image search candidates: global similarity + geometric verification.

Pure logic: no SQL, no framework, no OpenCV. The search pipeline gathers a
candidate pool (the union of each query crop's nearest neighbours, each candidate
carrying its best cosine over the crops), verifies it with local features
(`app.vision.local_features.verify_candidates`), and hands the result here.

The pool is the union of two retrievals per query crop: by the model embedding and by
the aggregate of the local features inside the crop (`app.vision.aggregate`), so a
product the model does not recognise can still be found by its keypoints. The
combination, with `g` the candidate's global cosine (best over the embedded crops), `a`
its local-aggregate cosine (best over the crop boxes; 0 without one), `c` its colour
descriptors' Bhattacharyya coefficient (`app.vision.colour`, best over the crop boxes; 0 without
one) and `n` its distinct
inlier count weighted by colour agreement (a colourway matches every grey keypoint, not
the colours):

    prior = g + aggregate_weight * a + colour_weight * c
    final = prior + verify_weight * v(n) * s + match_weight * (1 - exp(-m / match_saturation)),
    v(n) = 1 - exp(-max(0, n - min_inliers) / inlier_saturation),
    s = min(1, b / prominence_area)  (1 when prominence_area is 0)

with `m` the candidate's one-to-one tentative matches that passed the ratio test (before
RANSAC) and `b` the share of the photo its verified box covers.

The `verify_top` candidates with the best prior are verified (verification is the
expensive stage, linear in their number).

- below `min_inliers` verification says nothing (unrelated images reach a handful
  of chance inliers), so low-texture products are ordered by the global model alone;
- above it the bonus grows quickly and saturates, so a clearly verified product
  beats any unverified one, while among look-alikes that verify alike (colourways
  share every keypoint in grey) the global score still decides;
- flat products and soft photos rarely reach `min_inliers` (a plain body has a few corners,
  blur removes the fine ones), but their true product still keeps more ratio-test matches
  than the rest of the pool: the match term is that weak-texture evidence, small next to
  a verified match's bonus;
- colour is what a flat product keeps in a soft photo, and what tells its colourways apart; it
  is in the prior, so it also decides which candidates are verified; the colour descriptors'
  nearest neighbours (`colour_pool` per crop box) join the pool;
- a shopper photographs the product, so it fills more of the frame than what lies around it: a
  match verified in a small corner of the photo keeps only part of its bonus (`prominence`);
- `final` is monotone in `g`, `a`, `c`, `n`, `m` and `b`: higher is more similar.

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

    @property
    def matches(self) -> int: ...

    @property
    def box_fraction(self) -> float: ...


PROMINENCE_AREA = 0.2


@dataclass(frozen=True)
class RerankParams:
    # Pool: candidates fetched from the ANN index per embedded query crop; the union is merged.
    pool_size: int = 60
    # Most crops embedded by the model (the whole image included); fewer when the model is slow
    # (see `crops_for_model`).
    n_crops: int = 4
    # Candidates fetched per crop box by the local-feature aggregate.
    aggregate_pool: int = 20
    # Score combination. Aggregate cosines spread ~4x less than embedding cosines across a
    # catalog (std 0.046 vs 0.19 on the benchmark), so x4 gives the two signals similar say;
    # a verified match (bonus up to 4) outranks any unverified look-alike.
    aggregate_weight: float = 4.0
    verify_weight: float = 4.0
    min_inliers: int = 6
    inlier_saturation: float = 8.0
    # Colour: the weight of the colour descriptors' Bhattacharyya coefficient in the prior, and the
    # candidates fetched per crop box by colour (0: colour only scores the pool, adds nothing to it).
    # quality_bench's hard categories (README; recall@1 textured / low-texture / blurred): off 0.67 /
    # 0.39 / 0.41; weight 1: 0.73 / 0.42 / 0.41; 2: 0.80 / 0.44 / 0.55; 2 + pool 10: 0.82 / 0.44 /
    # 0.59; 3 + pool 20: 0.78 / 0.47 / 0.64; 4 + pool 10: 0.78 / 0.44 / 0.64 (before the query boxes'
    # surround subtraction); 3 + pool 10, with it: 0.80 / 0.47 / 0.64; with white balance too:
    # 3 + pool 10: 0.86 / 0.50 / 0.64, 4 + pool 20: 0.84 / 0.50 / 0.59.
    colour_weight: float = 3.0
    colour_pool: int = 10
    # Weak-texture evidence: ratio-test matches, whether or not RANSAC found a homography.
    match_weight: float = 3.0
    match_saturation: float = 8.0
    # `regions`: the min_inliers of a region. Lower than the overall ranking's: a product there
    # is a fraction of the frame and must also be verified where no earlier region is.
    region_min_inliers: int = 4
    # How many of the merged pool's best (by prior) to verify; 0 = all. A cap on the
    # matching cost, which is linear in it.
    verify_top: int = 60
    # Early exit: verification runs best-first in chunks and stops once the `settle_top` best
    # final scores provably cannot change (see `verification_settled`); 0 = verify all verify_top.
    # Off by default: on quality_bench, 1 cut verification ~44% but lost 3.75 points of
    # recall@10 (hits past the first rank unverified candidates by prior); 3 kept recall
    # exactly but showed no time saved (a noisy run).
    settle_top: int = 0
    # Extra model time reverse search may spend on crops beyond the whole image, in ms. 30, not
    # 60: once ONNX Runtime ran ViT-S/14 in 38-45 ms, 60 let a second crop in (+40-50 ms of
    # reverse p50 on 2 cores) for recall@1/@10 0.43/0.65 either way (quality_bench default-arch,
    # 300 products, 100 queries); a small model or a GPU still gets all four.
    crop_budget_ms: float = 30.0
    # Prominence: a verified match whose box covers less than this share of the photo earns
    # that much less of the verification bonus (linearly; 0 = off). A shopper photographs the
    # product, so it fills the frame more than what lies around it; without this, a textured
    # product in a corner of the photo verified and beat the flat product the photo was of.
    # Regions turn it off (every product of a shelf is a fraction of the frame). quality_bench's
    # hard set (recall@1 textured / low-texture / blurred / small in frame, seed 1): off 0.86 /
    # 0.50 / 0.64 / 0.47; 0.1 and 0.15: 0.88 / 0.50 / 0.64 / 0.47; 0.2: 0.88 / 0.53 / 0.64 / 0.47;
    # 0.3: 0.82 / 0.53 / 0.64 / 0.47. Seed 2 (not tuned on), off -> 0.2: 0.70 -> 0.75 / 0.53 /
    # 0.26 / 0.46, each unchanged.
    prominence_area: float = PROMINENCE_AREA

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.n_crops < 1 or self.aggregate_pool < 0:
            raise ValueError("pool_size and n_crops must be at least 1, aggregate_pool >= 0")
        if self.verify_weight < 0 or self.inlier_saturation <= 0 or self.min_inliers < 0 or self.region_min_inliers < 0:
            raise ValueError("verify_weight and min_inliers must be >= 0, inlier_saturation > 0")
        if self.settle_top < 0:
            raise ValueError("settle_top must be >= 0")
        if self.aggregate_weight < 0 or self.crop_budget_ms < 0:
            raise ValueError("aggregate_weight and crop_budget_ms must be >= 0")
        if self.colour_weight < 0 or self.colour_pool < 0:
            raise ValueError("colour_weight and colour_pool must be >= 0")
        if self.match_weight < 0 or self.match_saturation <= 0:
            raise ValueError("match_weight must be >= 0, match_saturation > 0")
        if not 0 <= self.prominence_area <= 1:
            raise ValueError("prominence_area must be in [0, 1]")


DEFAULT_PARAMS = RerankParams()


@dataclass(frozen=True)
class Candidate:
    product_key: Hashable
    global_score: float  # cosine similarity, best over the query crops
    verification: VerificationLike | None = None  # None: not verified (no features, or not in verify_top)
    aggregate_score: float | None = None  # local-aggregate cosine, best over the crop boxes; None: none stored
    colour_score: float | None = None  # colour Bhattacharyya coefficient, best over the crop boxes; None: none stored


def verification_bonus(inliers: float, params: RerankParams = DEFAULT_PARAMS) -> float:
    """v(n) in [0, 1): zero up to `min_inliers`, then saturating."""
    excess = inliers - params.min_inliers
    if excess <= 0:
        return 0.0
    return 1.0 - math.exp(-excess / params.inlier_saturation)


def prominence(v: VerificationLike, params: RerankParams = DEFAULT_PARAMS) -> float:
    """In [0, 1]: the share of the verification bonus a match of this size in the photo keeps."""
    if params.prominence_area <= 0:
        return 1.0
    return min(1.0, max(0.0, float(v.box_fraction)) / params.prominence_area)


def prior_score(candidate: Candidate, params: RerankParams = DEFAULT_PARAMS) -> float:
    """Score before verification; decides which candidates are verified."""
    a, c = candidate.aggregate_score, candidate.colour_score
    prior = float(candidate.global_score)
    if a is not None:
        prior += params.aggregate_weight * max(0.0, float(a))
    if c is not None:
        prior += params.colour_weight * max(0.0, float(c))
    return prior


def match_bonus(matches: float, params: RerankParams = DEFAULT_PARAMS) -> float:
    """In [0, 1): the weak-texture evidence of `matches` ratio-test matches."""
    return 1.0 - math.exp(-max(0.0, matches) / params.match_saturation)


def final_score(candidate: Candidate, params: RerankParams = DEFAULT_PARAMS) -> float:
    prior = prior_score(candidate, params)
    v = candidate.verification
    if v is None:
        return prior
    prior += params.match_weight * match_bonus(v.matches, params)
    if not v.homography_ok:
        return prior
    # inliers whose colours disagree (a colourway of the product) do not count
    bonus = verification_bonus(v.inliers * v.colour_agreement, params)
    return prior + params.verify_weight * bonus * prominence(v, params)


def counts_as_verified(v: VerificationLike | None, params: RerankParams = DEFAULT_PARAMS) -> bool:
    """Whether verification found the product (it earned a bonus): such hits say where (`_match`)."""
    return v is not None and v.homography_ok and verification_bonus(v.inliers * v.colour_agreement, params) > 0


def select_for_verification(
    candidates: Iterable[Candidate], params: RerankParams = DEFAULT_PARAMS
) -> list[Hashable]:
    """Keys of the `verify_top` candidates with the best prior (all when verify_top is 0)."""
    ordered = sorted(candidates, key=lambda c: -prior_score(c, params))
    limit = params.verify_top or len(ordered)
    return [c.product_key for c in ordered[:limit]]


def verification_settled(
    settled: Sequence[Candidate], next_prior: float | None, top: int, params: RerankParams = DEFAULT_PARAMS
) -> bool:
    """Whether verifying the rest can no longer change the `top` best of the final ranking.

    `settled`: candidates whose final score is known (verified, or with nothing to verify);
    `next_prior`: the best prior among those still unverified (None: none left). The bonus
    is below `verify_weight` and the match bonus below `match_weight`, so no unverified
    candidate can end above `next_prior + verify_weight + match_weight`; once the `top` best
    settled finals are all above that bound, they are the final ranking's first `top`, in the
    same order, whatever the rest would verify to.
    """
    if next_prior is None:
        return True
    if top < 1 or len(settled) < top:
        return False
    finals = sorted((final_score(c, params) for c in settled), reverse=True)
    return finals[top - 1] > next_prior + params.verify_weight + params.match_weight


# The whole photo's best hit settles the answer when verification gave it at least this share of
# the bonus at full prominence (a product filling the photo, clearly verified): a crop's embedding
# adds candidates by appearance, which such a match outranks unless it verifies better still.
SETTLED_BONUS = 0.5


def answer_settled(top: VerificationLike | None, params: RerankParams = DEFAULT_PARAMS) -> bool:
    """Whether the best hit's verification settles the answer (further crops need not be embedded)."""
    if top is None or not counts_as_verified(top, params) or prominence(top, params) < 1.0:
        return False
    return verification_bonus(top.inliers * top.colour_agreement, params) >= SETTLED_BONUS


def crops_for_model(single_image_ms: float, params: RerankParams = DEFAULT_PARAMS) -> int:
    """How many crops to embed (whole image included) when one forward pass takes `single_image_ms`.

    Extra crops share one batch, so each costs about one more single-image pass on a CPU
    and much less on a GPU; they are worth it while they fit `crop_budget_ms`.
    """
    extra = int(params.crop_budget_ms // max(single_image_ms, 1e-3))
    return max(1, min(params.n_crops, 1 + extra))


def combine_scores(
    candidates: Iterable[Candidate], params: RerankParams = DEFAULT_PARAMS
) -> list[tuple[Hashable, float]]:
    """(product_key, final score) best-first; ties broken by prior, then input order."""
    scored = [(final_score(c, params), prior_score(c, params), i, c.product_key) for i, c in enumerate(candidates)]
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
