"""Pure logic of several products per photo (app.domain.regions): places, members, identity."""

from __future__ import annotations

from dataclasses import dataclass, replace

from app.domain import regions
from app.domain.rerank import DEFAULT_PARAMS, Candidate, combine_scores


@dataclass(frozen=True)
class V:
    inliers: int
    box: regions.Box | None
    homography_ok: bool = True
    colour_agreement: float = 1.0
    matches: int = 0
    box_fraction: float = 0.5


def test_next_region_skips_places_already_found() -> None:
    verifications = {"a": V(40, (0, 0, 100, 100)), "a2": V(35, (5, 5, 100, 100)), "b": V(20, (200, 0, 300, 100))}
    ranked = [("a", 9.0), ("a2", 8.0), ("b", 7.0)]
    first = regions.next_region(ranked, verifications, [])
    assert first == regions.Region((0, 0, 100, 100), "a")
    second = regions.next_region(ranked, verifications, [first])
    assert second is not None and second.product_key == "b"  # a2 is at a's place
    assert regions.next_region(ranked, verifications, [first, second]) is None


def test_weak_verifications_make_no_region() -> None:
    below = DEFAULT_PARAMS.min_inliers  # no bonus: verification said nothing
    assert regions.next_region([("a", 1.0)], {"a": V(below, (0, 0, 50, 50))}, []) is None


def test_members_are_the_candidates_verified_at_the_place() -> None:
    region = regions.Region((0, 0, 100, 100), "a")
    verifications = {"a": V(40, (0, 0, 100, 100)), "a2": V(30, (4, 2, 98, 104)), "b": V(30, (200, 0, 300, 100))}
    assert sorted(regions.members(region, verifications)) == ["a", "a2"]


def test_identity_goes_to_the_look_alike_with_more_inliers() -> None:
    """At one place a product and its look-alike both verify; the overall ranking's bonus has
    saturated for both, so the global score would decide — in a region the inliers do."""
    more = Candidate("right", 0.55, V(51, (0, 0, 9, 9), colour_agreement=0.96), 0.06)
    fewer = Candidate("look-alike", 0.72, V(45, (0, 0, 9, 9), colour_agreement=0.84), 0.09)
    overall = regions.rank_members([fewer, more], ["right", "look-alike"], DEFAULT_PARAMS)
    assert [k for k, _ in overall] == ["look-alike", "right"]  # what the saturated bonus would say
    ranked = regions.rank_members([fewer, more], ["right", "look-alike"], regions.identity_params(DEFAULT_PARAMS))
    assert [k for k, _ in ranked] == ["right", "look-alike"]


def test_verified_members_come_before_unverified_neighbours() -> None:
    verified = Candidate("here", -0.5, V(10, (0, 0, 9, 9)), 0.1)
    neighbour = Candidate("crop neighbour", 0.95, None, 0.4)
    ranked = regions.rank_members([neighbour, verified], ["here"], regions.identity_params(DEFAULT_PARAMS))
    assert [k for k, _ in ranked] == ["here", "crop neighbour"]
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)


def test_the_verify_budget_is_one_pass_per_region() -> None:
    budget = regions.VerifyBudget(per_region=10)
    assert budget.take(list(range(25)), regions=0) == list(range(10))  # one pass when nothing is found yet
    assert budget.take(list(range(25)), regions=0) == []
    assert len(budget.take(list(range(25)), regions=2, reserve=4)) == 6  # 20 allowed, 10 spent, 4 kept back
    assert len(budget.take(list(range(25)), regions=2)) == 4
    assert budget.left(2) == 0 and budget.left(3) == 10


def test_a_weaker_verification_does_not_replace_a_stronger_one() -> None:
    """A pass over what is left of the photo verifies a candidate against fewer keypoints (a region
    found next to it took its own): what the whole photo showed of it stays."""
    verifications: dict = {"a": V(40, (0, 0, 9, 9), colour_agreement=0.5), "b": V(6, (0, 0, 9, 9))}
    regions.keep_stronger(
        verifications,
        [("a", V(0, None, homography_ok=False)), ("b", V(30, (5, 5, 50, 50), colour_agreement=0.9)), ("c", V(3, None))],
    )
    assert verifications["a"].inliers == 40  # 0 inliers against the residual: the 40 stay
    assert verifications["b"].inliers == 30  # stronger (27 colour-weighted > 6): replaced
    assert verifications["c"].inliers == 3  # new candidates are recorded
    regions.keep_stronger(verifications, [("a", V(45, (0, 0, 9, 9), colour_agreement=0.4))])
    assert verifications["a"].inliers == 40  # 45 x 0.4 = 18 colour-weighted inliers < 40 x 0.5 = 20


def test_regions_rank_without_prominence() -> None:
    """Every product of a shelf is a fraction of the frame: the regions stage's knobs (and a region's
    identity scoring) leave the size of a match out, and keep the rest of the photo's knobs."""
    p = replace(DEFAULT_PARAMS, prominence_area=0.2, verify_weight=3.0)
    assert regions.shelf_params(p) == replace(p, prominence_area=0.0)
    assert regions.identity_params(p).prominence_area == 0.0
    small = Candidate("small", 0.3, V(30, (0, 0, 9, 9), box_fraction=0.02))
    plain = Candidate("plain", 0.9, V(0, None, homography_ok=False))
    assert [k for k, _ in combine_scores([small, plain], p)] == ["plain", "small"]
    assert [k for k, _ in regions.rank_members([small, plain], [], regions.shelf_params(p))] == ["small", "plain"]
