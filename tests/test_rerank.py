"""Score combination for reverse image search (pure domain logic)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest

from app.domain.rerank import (
    DEFAULT_PARAMS,
    Candidate,
    RerankParams,
    answer_settled,
    combine_scores,
    crops_for_model,
    final_score,
    merge_crop_neighbours,
    prior_score,
    prominence,
    select_for_verification,
    verification_bonus,
    verification_settled,
)


@dataclass(frozen=True)
class V:
    inliers: int
    homography_ok: bool = True
    colour_agreement: float = 1.0
    matches: int = 0
    box_fraction: float = 0.5  # a match that fills half the photo (prominence keeps its whole bonus)


def keys(ranked: list[tuple[object, float]]) -> list[object]:
    return [k for k, _ in ranked]


def test_sorted_best_first_and_complete() -> None:
    cands = [Candidate(f"p{i}", g, V(n) if n is not None else None) for i, (g, n) in enumerate(
        [(0.5, None), (0.9, 3), (0.7, 40), (0.6, 12), (0.95, None)]
    )]  # fmt: skip
    ranked = combine_scores(cands)
    assert sorted(keys(ranked)) == sorted(c.product_key for c in cands)
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)


def test_clearly_verified_product_beats_better_global_match() -> None:
    ranked = combine_scores([Candidate("look-alike", 0.95, V(0)), Candidate("exact", 0.70, V(40))])
    assert keys(ranked) == ["exact", "look-alike"]


def test_without_verification_global_score_decides() -> None:
    """Low-texture products verify poorly: then the global model carries the ranking."""
    cands = [
        Candidate("a", 0.61, None),
        Candidate("b", 0.83, V(2)),  # a few chance inliers: below min_inliers, no effect
        Candidate("c", 0.72, V(0, homography_ok=False)),
        Candidate("d", 0.90, None),
    ]
    assert keys(combine_scores(cands)) == ["d", "b", "c", "a"]
    assert final_score(cands[1]) == pytest.approx(0.83)


def test_look_alikes_that_verify_alike_are_ordered_by_global_score() -> None:
    ranked = combine_scores([Candidate("other-colour", 0.80, V(30)), Candidate("same-colour", 0.86, V(30))])
    assert keys(ranked) == ["same-colour", "other-colour"]


def test_colour_disagreement_removes_the_bonus() -> None:
    same = Candidate("same", 0.80, V(30, colour_agreement=1.0))
    colourway = Candidate("colourway", 0.80, V(30, colour_agreement=0.1))
    assert final_score(same) > final_score(colourway)
    assert keys(combine_scores([colourway, same])) == ["same", "colourway"]


def test_monotone_in_inliers_and_global_score() -> None:
    p = DEFAULT_PARAMS
    last = -1.0
    for n in range(0, 200, 5):
        s = final_score(Candidate("x", 0.5, V(n)), p)
        assert s >= last
        last = s
    assert final_score(Candidate("x", 0.6, V(20))) > final_score(Candidate("x", 0.5, V(20)))
    # the bonus saturates below verify_weight
    assert verification_bonus(10_000, p) <= 1.0
    assert final_score(Candidate("x", 0.5, V(10_000))) <= 0.5 + p.verify_weight


def test_min_inliers_threshold() -> None:
    p = RerankParams(min_inliers=10, inlier_saturation=5.0)
    assert verification_bonus(10, p) == 0.0
    assert verification_bonus(11, p) > 0.0


def test_ties_keep_input_order() -> None:
    cands = [Candidate(k, 0.5, None) for k in ("b", "a", "c")]
    assert keys(combine_scores(cands)) == ["b", "a", "c"]


def test_empty() -> None:
    assert combine_scores([]) == []


def test_params_validation() -> None:
    with pytest.raises(ValueError):
        RerankParams(pool_size=0)
    with pytest.raises(ValueError):
        RerankParams(inlier_saturation=0)
    with pytest.raises(ValueError):
        RerankParams(verify_weight=-1)


def test_merge_crop_neighbours_keeps_best_cosine() -> None:
    merged = merge_crop_neighbours([[("a", 0.5), ("b", 0.7)], [("a", 0.9), ("c", 0.2)], []])
    assert merged == {"a": 0.9, "b": 0.7, "c": 0.2}


def test_aggregate_similarity_adds_to_the_prior_and_missing_counts_as_nothing() -> None:
    p = RerankParams(aggregate_weight=2.0)
    assert prior_score(Candidate("a", 0.5, None, 0.25), p) == pytest.approx(1.0)
    assert prior_score(Candidate("a", 0.5, None, None), p) == pytest.approx(0.5)
    assert prior_score(Candidate("a", 0.5, None, -0.3), p) == pytest.approx(0.5)  # negative: no evidence


def test_verification_goes_to_the_best_priors_only() -> None:
    p = RerankParams(verify_top=2, aggregate_weight=1.0)
    cands = [Candidate("low", 0.9, None, 0.0), Candidate("mid", 0.5, None, 0.6), Candidate("top", 0.8, None, 0.5)]
    assert select_for_verification(cands, p) == ["top", "mid"]
    assert len(select_for_verification(cands, RerankParams(verify_top=0))) == 3


def test_a_product_found_only_by_its_keypoints_wins_once_verified() -> None:
    p = RerankParams()
    unrelated_but_globally_close = Candidate("lookalike", 0.95, None, 0.05)
    found_by_aggregate = Candidate("product", 0.20, V(30), 0.20)
    ranked = combine_scores([unrelated_but_globally_close, found_by_aggregate], p)
    assert ranked[0][0] == "product"


def test_crop_count_follows_the_model_speed() -> None:
    p = RerankParams(n_crops=4, crop_budget_ms=60.0)
    assert crops_for_model(2.0, p) == 4  # small model: every crop fits
    assert crops_for_model(25.0, p) == 3
    assert crops_for_model(111.0, p) == 1  # a ViT-S on 2 cores: the whole photo only
    assert crops_for_model(0.0, p) == 4


def _early_exit(cands: list[Candidate], verify: dict, top: int, chunk: int, p: RerankParams) -> tuple[list, int]:
    """Verification in best-prior-first chunks, stopped once `verification_settled` says so,
    exactly as the reverse search service runs it: (ranking, candidates verified)."""
    order = select_for_verification(cands, p)
    by_key = {c.product_key: c for c in cands}
    done: dict = {}
    for end in range(chunk, len(order) + chunk, chunk):
        done.update({k: verify[k] for k in order[end - chunk : end]})
        settled = [replace(by_key[k], verification=done[k]) for k in order[:end]]
        rest = order[end:]
        if verification_settled(settled, prior_score(by_key[rest[0]], p) if rest else None, top, p):
            break
    ranked = combine_scores([replace(c, verification=done.get(c.product_key)) for c in cands], p)
    return ranked, len(done)


@pytest.mark.parametrize("seed", range(40))
def test_early_exit_keeps_the_settled_top_exactly(seed: int) -> None:
    """Whatever the unverified candidates would verify to, the first `top` hits of the early
    exit are those of full verification, same order and scores; and it does stop early."""
    rng = random.Random(seed)
    p = RerankParams(verify_top=0)
    cands = [Candidate(i, rng.uniform(0.2, 0.9), None, rng.uniform(0.5, 0.8)) for i in range(60)]
    # a few true matches with many inliers among chance-level ones
    verify = {
        c.product_key: V(rng.choice([40, 80, 200]) if rng.random() < 0.08 else rng.randint(0, 9)) for c in cands
    }
    full = combine_scores([replace(c, verification=verify[c.product_key]) for c in cands], p)
    for top in (1, 3, 10):
        ranked, verified = _early_exit(cands, verify, top, 10, p)
        assert ranked[:top] == full[:top], (top, ranked[:top], full[:top])
        assert verified <= len(cands)


def test_early_exit_stops_once_a_clear_match_outscores_every_bound() -> None:
    p = RerankParams(verify_top=0)
    cands = [Candidate(0, 0.9, None, 0.8)] + [Candidate(i, 0.3 - 0.002 * i, None, 0.2) for i in range(1, 60)]
    verify = {c.product_key: V(200, matches=200) if c.product_key == 0 else V(3, matches=3) for c in cands}
    ranked, verified = _early_exit(cands, verify, 1, 10, p)
    assert verified == 10 and ranked[0][0] == 0
    # a decisive prior alone settles nothing: the bound is prior + verify_weight + match_weight
    assert not verification_settled([cands[0]], prior_score(cands[1], p), 1, p)
    assert not verification_settled([], 0.0, 1, p)
    assert verification_settled([], None, 1, p)  # nothing left to verify
    assert not verification_settled([replace(cands[0], verification=V(200))], 0.0, 0, p)  # top 0: never stops


def test_ratio_test_matches_lift_a_product_that_cannot_verify() -> None:
    """A flat product (or a soft photo) keeps a few ratio-test matches but no homography: those
    matches are weak evidence that beats a slightly better global score, never a verified match."""
    flat = Candidate("flat truth", 0.60, V(0, homography_ok=False, matches=7))
    other = Candidate("other", 0.70, V(0, homography_ok=False, matches=1))
    verified = Candidate("verified", 0.40, V(30, matches=34))
    assert keys(combine_scores([other, flat])) == ["flat truth", "other"]
    assert keys(combine_scores([flat, verified])) == ["verified", "flat truth"]
    off = RerankParams(match_weight=0.0)
    assert keys(combine_scores([other, flat], off)) == ["other", "flat truth"]
    with pytest.raises(ValueError):
        RerankParams(match_saturation=0)


def test_colour_adds_to_the_prior_and_missing_counts_as_nothing() -> None:
    p = RerankParams(aggregate_weight=2.0, colour_weight=1.5)
    assert prior_score(Candidate("a", 0.5, None, 0.25, 0.6), p) == pytest.approx(0.5 + 0.5 + 0.9)
    assert prior_score(Candidate("a", 0.5, None, 0.25, None), p) == pytest.approx(1.0)  # not backfilled yet
    assert prior_score(Candidate("a", 0.5, None, None, 0.6), RerankParams(colour_weight=0.0)) == pytest.approx(0.5)


def test_colour_tells_a_flat_product_from_its_colourway() -> None:
    """Neither verifies (a plain body); the global model slightly prefers the colourway: colour decides,
    and also decides which of them is verified when only one can be."""
    p = RerankParams(colour_weight=2.0, verify_top=1)
    colourway = Candidate("colourway", 0.62, V(2, matches=3), None, 0.35)
    product = Candidate("product", 0.58, V(2, matches=3), None, 0.90)
    assert keys(combine_scores([colourway, product], p)) == ["product", "colourway"]
    assert keys(combine_scores([colourway, product], RerankParams(colour_weight=0.0))) == ["colourway", "product"]
    assert select_for_verification([colourway, product], p) == ["product"]


def test_colour_params_validation() -> None:
    with pytest.raises(ValueError):
        RerankParams(colour_weight=-0.1)
    with pytest.raises(ValueError):
        RerankParams(colour_pool=-1)


def test_a_small_match_in_a_corner_loses_to_the_flat_product_the_photo_is_of() -> None:
    """A textured product verified in a small corner of the photo (7% of it) against the flat
    product filling it, which cannot verify: prominence scales the corner's bonus down."""
    corner = Candidate("corner", 0.30, V(30, matches=34, box_fraction=0.07), None, 0.20)
    flat = Candidate("flat truth", 0.70, V(0, homography_ok=False, matches=7), None, 0.95)
    on = RerankParams(prominence_area=0.2)
    assert keys(combine_scores([corner, flat], RerankParams(prominence_area=0.0))) == ["corner", "flat truth"]
    assert keys(combine_scores([corner, flat], on)) == ["flat truth", "corner"]
    # a match covering the photo keeps its whole bonus; the bonus shrinks linearly below the area
    assert prominence(V(30, box_fraction=0.5), on) == 1.0
    assert prominence(V(30, box_fraction=0.05), on) == pytest.approx(0.25)
    assert prominence(V(30, box_fraction=0.05), RerankParams(prominence_area=0.0)) == 1.0
    # the same photo with the verified product filling it: verification wins as before
    large = replace(corner, verification=V(30, matches=34, box_fraction=0.45))
    assert keys(combine_scores([large, flat], on)) == ["corner", "flat truth"]
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            RerankParams(prominence_area=bad)


def test_answer_settled_only_by_a_clear_prominent_verification() -> None:
    """Crops on demand: only a product verified with half the bonus or more, filling its share of
    the photo, settles the answer; a weak, colour-mismatched, failed or small match leaves it open."""
    p = DEFAULT_PARAMS
    assert answer_settled(V(40), p)
    assert not answer_settled(None, p)
    assert not answer_settled(V(p.min_inliers + 2), p)  # verified, but weakly
    assert not answer_settled(V(40, colour_agreement=0.1), p)  # a colourway's grey keypoints
    assert not answer_settled(V(40, homography_ok=False), p)
    assert not answer_settled(V(40, box_fraction=p.prominence_area / 2), p)  # a corner of the photo
    # the threshold: half the bonus is min_inliers + saturation * ln 2 inliers
    edge = p.min_inliers + p.inlier_saturation * 0.6931471805599453
    assert answer_settled(V(int(edge) + 1), p) and not answer_settled(V(int(edge)), p)
