"""Several products in one photo: regions from repeated verification (pure logic).

Verification of a candidate says *where* in the photo it matched (the projected box of
`local_features.Verification`). A photo of a shelf verifies several products at several
places; one product also verifies its look-alikes (colourways share every grey keypoint)
at the same place. So a region is a verified box that does not overlap an earlier, better
region, and a region's members are the candidates verified at about the same place.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from app.domain.rerank import (
    DEFAULT_PARAMS,
    Candidate,
    RerankParams,
    VerificationLike,
    combine_scores,
    counts_as_verified,
)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the query photo's pixels

# Two boxes of the same region overlap at least this much; a new region overlaps every
# earlier one less than `NEW_REGION_OVERLAP` and its centre lies outside them.
SAME_REGION_OVERLAP = 0.5
NEW_REGION_OVERLAP = 0.3
MAX_REGIONS = 6
# Within a region the candidates verified there are rivals for one object (a product and its
# look-alikes, which share keypoints): the one whose colour-consistent inliers explain more of
# it is the object. The bonus saturates this many times more slowly there than in the overall
# ranking, so 50 inliers beat 40 by more than the global score separates look-alikes.
REGION_SATURATION_FACTOR = 4.0
# Candidates retrieved per region (by its crop's embedding and by its keypoints' aggregate) and
# verified in the region's own pass.
REGION_POOL = 20
# Keypoints of the photo for finding several products (its regions stage extracts them once):
# each product of a shelf is a fraction of the frame, so more of the photo's resolution and a
# larger budget than one product's search (local_features.QUERY_MAX_*).
REGION_MAX_KEYPOINTS = 1536
REGION_MAX_SIDE = 1024


class LocatedVerification(VerificationLike, Protocol):
    """A verification that also says where in the photo it matched."""

    @property
    def box(self) -> Box | None: ...


@dataclass(frozen=True)
class Region:
    box: Box
    product_key: Hashable  # the best candidate verified there


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre_inside(box: Sequence[float], other: Sequence[float]) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return other[0] <= cx <= other[2] and other[1] <= cy <= other[3]


def is_new_place(box: Box, found: Iterable[Region]) -> bool:
    return all(iou(box, r.box) < NEW_REGION_OVERLAP and not _centre_inside(box, r.box) for r in found)


def next_region(
    ranked: Sequence[tuple[Hashable, float]],
    verifications: Mapping[Hashable, LocatedVerification],
    found: Sequence[Region],
    params: RerankParams = DEFAULT_PARAMS,
) -> Region | None:
    """The best-ranked verified candidate found somewhere no earlier region covers."""
    taken = {r.product_key for r in found}
    for key, _ in ranked:
        v = verifications.get(key)
        if key in taken or v is None or v.box is None or not counts_as_verified(v, params):
            continue
        if is_new_place(v.box, found):
            return Region(v.box, key)
    return None


@dataclass
class VerifyBudget:
    """What the regions stage may verify: one more pass (`per_region` candidates) per region found,
    one pass when none is, all its passes together (residual passes and the regions' own)."""

    per_region: int
    spent: int = 0

    def left(self, regions: int) -> int:
        return max(0, self.per_region * max(1, regions) - self.spent)

    def take(self, keys: Sequence[Hashable], regions: int, reserve: int = 0) -> list[Hashable]:
        """The first of `keys` the budget allows (keeping `reserve` for later), counted as spent."""
        allowed = list(keys[: max(0, self.left(regions) - reserve)])
        self.spent += len(allowed)
        return allowed


def _strength(v: VerificationLike) -> float:
    return v.inliers * v.colour_agreement if v.homography_ok else -1.0


def keep_stronger(
    verifications: dict[Hashable, LocatedVerification], new: Iterable[tuple[Hashable, LocatedVerification]]
) -> None:
    """Record new verifications, each unless the candidate already has a stronger one (more
    colour-weighted inliers). A pass over what is left of the photo (its found products' keypoints
    removed) verifies candidates against fewer keypoints: a look-alike's product verified where
    the look-alike was found reaches nothing there, and must not lose what the whole photo showed."""
    for key, v in new:
        old = verifications.get(key)
        if old is None or _strength(v) > _strength(old):
            verifications[key] = v


def shelf_params(params: RerankParams = DEFAULT_PARAMS) -> RerankParams:
    """The regions stage's ranking: the photo's knobs without prominence (every product of a shelf
    is a fraction of the frame, so the size of a match says nothing about which is meant)."""
    return replace(params, prominence_area=0.0)


def region_params(params: RerankParams = DEFAULT_PARAMS) -> RerankParams:
    """What counts as verified at a place (`next_region`, `members`): `region_min_inliers`."""
    return replace(params, min_inliers=params.region_min_inliers)


def identity_params(params: RerankParams = DEFAULT_PARAMS) -> RerankParams:
    """The scoring of a region's own hits: verification decides between look-alikes at one place."""
    return replace(shelf_params(params), inlier_saturation=params.inlier_saturation * REGION_SATURATION_FACTOR)


def members(
    region: Region,
    verifications: Mapping[Hashable, LocatedVerification],
    params: RerankParams = DEFAULT_PARAMS,
) -> list[Hashable]:
    """Candidates verified at the region's place (the product and look-alikes of it)."""
    return [
        key
        for key, v in verifications.items()
        if v.box is not None and counts_as_verified(v, params) and iou(v.box, region.box) >= SAME_REGION_OVERLAP
    ]


def rank_members(
    candidates: Sequence[Candidate], at_place: Iterable[Hashable], params: RerankParams = DEFAULT_PARAMS
) -> list[tuple[Hashable, float]]:
    """A region's hits best-first: the candidates verified at its place (scored with
    `identity_params`) lifted by a full verification bonus above the crop's unverified
    neighbours, so appearance alone never names what verification found there."""
    here = set(at_place)
    lifted = [(k, s + (params.verify_weight if k in here else 0.0)) for k, s in combine_scores(candidates, params)]
    return sorted(lifted, key=lambda t: -t[1])
