"""Self-calibration of reverse image search: `lookalike calibrate INDEX`.

The re-ranking knobs (prior = embedding cosine + aggregateWeight x aggregate cosine, a
verification bonus up to verifyWeight, verifyTop candidates verified, minInliers,
inlierSaturation, a weak-texture bonus up to matchWeight saturating at matchSaturation)
were measured with random-weight models; real weights, and each catalog, want others.
Calibration measures them on the index itself:

1. a sample of the index's own products: their images (as the service fetches them) turned
   into in-the-wild photos by the generator's wild-photo code (`app.samples.wild`);
2. each photo run once through the real pipeline (`ReverseSearchService.gather`) with every
   candidate of the pool verified, so each candidate's signals (embedding cosine, aggregate
   cosine, inliers) are known;
3. the scoring re-done for each sweep point from those signals (no model, no matching, no
   SQL per point): a coordinate-descent sweep of the knobs on the first part of the photos,
   recall@1/@10 before and after on the held-out rest as well.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from app.domain.rerank import RerankParams
from app.domain.reverse import SCORING_KNOBS, ReverseSearchService, params_for
from app.domain.search import StageTimer
from app.samples import wild
from app.storage import search as search_sql
from app.storage.indexes import IndexRecord

# The sweep: values tried per knob (the current value is always tried too).
SWEEP: dict[str, list[float]] = {
    "aggregate_weight": [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
    "verify_weight": [0.5, 1.0, 2.0, 4.0, 8.0],
    "verify_top": [10, 20, 40, 60, 100, 200],
    "min_inliers": [2, 4, 6, 8, 10, 14],
    "inlier_saturation": [2.0, 4.0, 8.0, 16.0, 32.0],
    "match_weight": [0.0, 0.5, 1.0, 2.0, 4.0],
    "match_saturation": [4.0, 8.0, 16.0, 32.0],
}
ROUNDS = 2
_FIELD_TO_KNOB = {v: k for k, v in SCORING_KNOBS.items()}


@dataclass(frozen=True)
class QuerySignals:
    """One calibration photo's candidates, in pool order, and where the true product is (-1: absent)."""

    g: np.ndarray  # embedding cosine, best over crops
    a: np.ndarray  # aggregate cosine clipped at 0 (0 without one)
    inliers: np.ndarray  # colour-weighted distinct inliers where the homography is plausible, else 0
    truth: int
    matches: np.ndarray | None = None  # ratio-test matches of verified candidates (0 when not verified)


def signals_of(candidates: dict[Hashable, Any], verifications: dict[Hashable, Any], truth: Hashable) -> QuerySignals:
    keys = list(candidates)
    g = np.array([float(candidates[k].global_score) for k in keys], np.float64)
    a = np.array([max(0.0, float(candidates[k].aggregate_score or 0.0)) for k in keys], np.float64)
    eff = np.zeros(len(keys), np.float64)
    matches = np.zeros(len(keys), np.float64)
    for i, k in enumerate(keys):
        v = verifications.get(k)
        if v is not None:
            matches[i] = v.matches
        if v is not None and v.homography_ok:
            eff[i] = v.inliers * v.colour_agreement
    return QuerySignals(g, a, eff, keys.index(truth) if truth in candidates else -1, matches)


def rank_of_truth(q: QuerySignals, p: RerankParams) -> int | None:
    """The true product's rank under `p`, exactly as `rerank` ranks: the verify_top best by prior
    are verified and ranked by final score (ties: prior, then pool order); None: not ranked."""
    if q.truth < 0:
        return None
    prior = q.g + p.aggregate_weight * q.a
    order = np.argsort(-prior, kind="stable")
    top = order[: p.verify_top] if p.verify_top else order
    if q.truth not in top:
        return None
    excess = np.maximum(0.0, q.inliers[top] - p.min_inliers)
    bonus = np.where(excess > 0, 1.0 - np.exp(-excess / p.inlier_saturation), 0.0)
    final = prior[top] + p.verify_weight * bonus
    if q.matches is not None:
        final = final + p.match_weight * (1.0 - np.exp(-q.matches[top] / p.match_saturation))
    ranked = top[np.lexsort((top, -prior[top], -final))]
    return int(np.nonzero(ranked == q.truth)[0][0])


def recall(queries: Sequence[QuerySignals], p: RerankParams) -> dict[str, float]:
    ranks = [rank_of_truth(q, p) for q in queries]
    n = max(1, len(ranks))
    return {
        "recallAt1": round(sum(1 for r in ranks if r is not None and r < 1) / n, 4),
        "recallAt10": round(sum(1 for r in ranks if r is not None and r < 10) / n, 4),
        "mrrAt10": round(sum(1 / (r + 1) for r in ranks if r is not None and r < 10) / n, 4),
    }


def _objective(m: dict[str, float]) -> tuple[float, float]:
    return (m["recallAt1"] + 0.5 * m["mrrAt10"], m["recallAt10"])


def sweep(queries: Sequence[QuerySignals], start: RerankParams) -> tuple[RerankParams, int]:
    """Coordinate descent over SWEEP from `start`; a change must beat the current best strictly
    (ties keep the current knobs). Returns the best parameters and the number of points scored."""
    best, best_score = start, _objective(recall(queries, start))
    points = 1
    for _ in range(ROUNDS):
        improved = False
        for name, values in SWEEP.items():
            for value in values:
                candidate = replace(best, **{name: type(getattr(best, name))(value)})
                score = _objective(recall(queries, candidate))
                points += 1
                if score > best_score:
                    best, best_score, improved = candidate, score, True
        if not improved:
            break
    return best, points


def knobs_of(p: RerankParams) -> dict[str, float | int]:
    return {knob: getattr(p, name) for knob, name in SCORING_KNOBS.items()}


# --------------------------------------------------------------------------- photos


def _data_url(image: Image.Image) -> str:
    import base64

    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


# --------------------------------------------------------------------------- the run


@dataclass
class CalibrationReport:
    before: dict[str, Any]
    after: dict[str, Any]
    knobs: dict[str, Any]
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "knobs": self.knobs, **self.detail}


async def calibrate(
    service: ReverseSearchService,
    index: IndexRecord,
    n_queries: int,
    seed: int = 0,
    holdout: float = 0.5,
    progress: Callable[[str], None] = lambda _: None,
) -> CalibrationReport:
    started = time.perf_counter()
    rows: list[search_sql.Row] = []
    while True:  # the whole catalog's ids and image URLs, in id order
        offset = len(rows)
        page = await service.db.read(lambda conn, at=offset: search_sql.catalog_page(conn, index, 1000, at))
        rows += page
        if len(page) < 1000 or len(rows) >= 10_000:
            break
    rows = [r for r in rows if isinstance(r.doc.get("variantImageUrl"), str)]
    if len(rows) < 2:
        raise ValueError("calibration needs an index with at least two products with images")
    rng = np.random.default_rng(seed)
    sample = [rows[int(i)] for i in rng.permutation(len(rows))[: min(n_queries, len(rows))]]
    items = []
    for i, row in enumerate(sample):
        loaded = await service.vision.load(row.doc["variantImageUrl"])
        photo = loaded.image.convert("RGB")
        items.append(wild.CatalogItem(row.product_id, photo, {}, row.product_id, wild.cutout_from_photo(photo)))
        if (i + 1) % 25 == 0:
            progress(f"fetched {i + 1}/{len(sample)} product images")
    current = params_for(index.reverse_search, service.params)
    gather_params = replace(current, verify_top=0)  # verify the whole pool: every sweep point is a lookup
    signals: list[QuerySignals] = []
    for i, (row, item) in enumerate(zip(sample, items, strict=True)):
        qrng = np.random.default_rng([seed, i, 0xCA1])
        image, _ = wild.make_wild_query(item, qrng, items)
        request = _request(_data_url(image))
        query, gathered = await service.gather(index, request, StageTimer(), gather_params)
        signals.append(signals_of(gathered.candidates, gathered.verifications, row.product_pk))
        if (i + 1) % 10 == 0 or i + 1 == len(sample):
            progress(f"searched {i + 1}/{len(sample)} calibration photos ({time.perf_counter() - started:.0f} s)")
    n_tune = max(1, int(round(len(signals) * (1 - holdout)))) if len(signals) > 1 else 1
    tune, held = signals[:n_tune], signals[n_tune:]
    best, points = sweep(tune, current)
    progress(f"swept {points} knob settings")

    def report(p: RerankParams) -> dict[str, Any]:
        out: dict[str, Any] = {**recall(signals, p), "tuned": recall(tune, p)}
        if held:
            out["heldOut"] = recall(held, p)
        return {**out, "knobs": knobs_of(p)}

    return CalibrationReport(
        before=report(current),
        after=report(best),
        knobs=knobs_of(best),
        detail={
            "index": index.name,
            "queries": len(signals),
            "tunedOn": len(tune),
            "heldOut": len(held),
            "sweepPoints": points,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )


def _request(q: str) -> Any:
    from app.contract.search import ReverseSearchRequest  # the contract layer, as the HTTP API parses it

    return ReverseSearchRequest.parse({"q": q, "limit": 10})
