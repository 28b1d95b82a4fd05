"""Self-calibration of reverse image search: `POST /indexes/{index}/calibrate`, which
`lookalike calibrate INDEX` calls.

The re-ranking knobs (prior = embedding cosine + aggregateWeight x aggregate cosine, a
verification bonus up to verifyWeight, verifyTop candidates verified, minInliers,
inlierSaturation, a weak-texture bonus up to matchWeight saturating at matchSaturation,
colourWeight x the colour descriptors' coefficient in the prior, the verification bonus scaled
down for a match covering less than prominenceArea of the photo)
were measured with random-weight models; real weights, and each catalog, want others.
Calibration measures them on the index itself:

1. a sample of the index's own products: their images (as the service fetches them) turned
   into in-the-wild photos by the generator's wild-photo code (`app.samples.wild`); the int8
   guard is re-run on these catalog images (reported as `int8Guard`, stored by `apply`);
2. each photo run once through the real pipeline (`ReverseSearchService.gather`) with every
   candidate of the pool verified, so each candidate's signals (embedding cosine, aggregate
   cosine, inliers) are known;
3. the scoring re-done for each sweep point from those signals (no model, no matching, no
   SQL per point): a coordinate-descent sweep of the knobs on the first part of the photos,
   recall@1/@10 before and after on the held-out rest as well.

`calibrate` is an async generator of progress events ending with the report, so the HTTP layer
can stream them; the image work (cut-outs, wild photos, JPEG) and the sweep run on the vision
service's CPU threads, off the event loop. `CalibrationService` adds what a request needs: the
checks that give a clear 409 (reverse search off, features still pending, another calibration
of the index running: one at a time, across processes, by an advisory lock) and `apply`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from collections.abc import AsyncGenerator, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import numpy as np
from PIL import Image

from app.contract.search import ReverseSearchRequest
from app.domain import inference
from app.domain.index_admin import IndexAdmin
from app.domain.rerank import RerankParams
from app.domain.reverse import SCORING_KNOBS, ReverseSearchService, params_for
from app.domain.search import StageTimer
from app.errors import ApiError, ImageError
from app.samples import wild
from app.storage import indexes as indexes_sql
from app.storage import search as search_sql
from app.storage.indexes import IndexRecord
from app.vision.guard import GuardResult
from app.vision.model import ModelSpec

log = logging.getLogger("lookalike.calibrate")

# The sweep: values tried per knob (the current value is always tried too).
SWEEP: dict[str, list[float]] = {
    "aggregate_weight": [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
    "verify_weight": [0.5, 1.0, 2.0, 4.0, 8.0],
    "verify_top": [10, 20, 40, 60, 100, 200],
    "min_inliers": [2, 4, 6, 8, 10, 14],
    "inlier_saturation": [2.0, 4.0, 8.0, 16.0, 32.0],
    "match_weight": [0.0, 0.5, 1.0, 2.0, 4.0],
    "match_saturation": [4.0, 8.0, 16.0, 32.0],
    "colour_weight": [0.0, 0.5, 1.0, 2.0, 4.0, 8.0],
    "prominence_area": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3],
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
    c: np.ndarray | None = None  # colour coefficient clipped at 0 (0 without one)
    box_fraction: np.ndarray | None = None  # share of the photo the verified match's box covers (0: none)


def signals_of(candidates: dict[Hashable, Any], verifications: dict[Hashable, Any], truth: Hashable) -> QuerySignals:
    keys = list(candidates)
    g = np.array([float(candidates[k].global_score) for k in keys], np.float64)
    a = np.array([max(0.0, float(candidates[k].aggregate_score or 0.0)) for k in keys], np.float64)
    c = np.array([max(0.0, float(candidates[k].colour_score or 0.0)) for k in keys], np.float64)
    eff = np.zeros(len(keys), np.float64)
    matches = np.zeros(len(keys), np.float64)
    box_fraction = np.zeros(len(keys), np.float64)
    for i, k in enumerate(keys):
        v = verifications.get(k)
        if v is not None:
            matches[i] = v.matches
        if v is not None and v.homography_ok:
            eff[i] = v.inliers * v.colour_agreement
            box_fraction[i] = max(0.0, float(v.box_fraction))
    return QuerySignals(g, a, eff, keys.index(truth) if truth in candidates else -1, matches, c, box_fraction)


def rank_of_truth(q: QuerySignals, p: RerankParams) -> int | None:
    """The true product's rank under `p`, exactly as `rerank` ranks: the verify_top best by prior
    are verified and ranked by final score (ties: prior, then pool order); None: not ranked."""
    if q.truth < 0:
        return None
    prior = q.g + p.aggregate_weight * q.a
    if q.c is not None:
        prior = prior + p.colour_weight * q.c
    order = np.argsort(-prior, kind="stable")
    top = order[: p.verify_top] if p.verify_top else order
    if q.truth not in top:
        return None
    excess = np.maximum(0.0, q.inliers[top] - p.min_inliers)
    bonus = np.where(excess > 0, 1.0 - np.exp(-excess / p.inlier_saturation), 0.0)
    if p.prominence_area > 0 and q.box_fraction is not None:
        bonus = bonus * np.minimum(1.0, q.box_fraction[top] / p.prominence_area)
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
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def _catalog_item(product_id: str, image: Image.Image) -> wild.CatalogItem:
    photo = image.convert("RGB")
    return wild.CatalogItem(product_id, photo, {}, product_id, wild.cutout_from_photo(photo))


def _wild_photo(item: wild.CatalogItem, others: list[wild.CatalogItem], seed: int, i: int) -> str:
    image, _ = wild.make_wild_query(item, np.random.default_rng([seed, i, 0xCA1]), others)
    return _data_url(image)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Progress:
    stage: str  # start, fetch, search, sweep, apply
    done: int
    total: int
    message: str


@dataclass
class CalibrationReport:
    before: dict[str, Any]
    after: dict[str, Any]
    knobs: dict[str, Any]
    detail: dict[str, Any]
    guard: GuardResult | None = None  # the int8 guard on the sample (stored by apply)
    applied: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "knobs": self.knobs, **self.detail,
                "applied": self.applied}


def _not_enough(found: int) -> ApiError:
    return ApiError(
        409, "not_enough_products",
        f"calibration needs at least two products whose images load; this index has {found}",
    )


async def _catalog(service: ReverseSearchService, index: IndexRecord) -> list[search_sql.Row]:
    """The catalog's ids and image URLs, in id order (at most 10,000 products: a sample is drawn)."""
    rows: list[search_sql.Row] = []
    while True:
        offset = len(rows)
        page = await service.db.read(lambda conn, at=offset: search_sql.catalog_page(conn, index, 1000, at))
        rows += page
        if len(page) < 1000 or len(rows) >= 10_000:
            break
    return [r for r in rows if isinstance(r.doc.get("variantImageUrl"), str)]


async def calibrate(
    service: ReverseSearchService,
    index: IndexRecord,
    n_queries: int,
    seed: int = 0,
    holdout: float = 0.5,
) -> AsyncGenerator[Progress | CalibrationReport, None]:
    """Progress events, then the report (the last item). Raises ApiError(409) when fewer than two
    sampled products have an image that loads."""
    started = time.perf_counter()
    rows = await _catalog(service, index)
    if len(rows) < 2:
        raise _not_enough(len(rows))
    rng = np.random.default_rng(seed)
    sample = [rows[int(i)] for i in rng.permutation(len(rows))[: min(n_queries, len(rows))]]
    kept: list[search_sql.Row] = []
    items: list[wild.CatalogItem] = []
    for i, row in enumerate(sample):
        try:
            loaded = await service.vision.load(row.doc["variantImageUrl"])
        except ImageError as exc:  # a product whose image is gone: skipped, counted in the report
            log.info("calibration of %s: skipping %s: %s", index.name, row.product_id, exc.message)
        else:
            kept.append(row)
            items.append(await service.vision.run_cpu(_catalog_item, row.product_id, loaded.image))
        if (i + 1) % 10 == 0 or i + 1 == len(sample):
            yield Progress("fetch", i + 1, len(sample), f"fetched {i + 1}/{len(sample)} product images")
    if len(items) < 2:
        raise _not_enough(len(items))
    # The int8 guard again, on these images of the index's own catalog (stored with the knobs by
    # `apply`; the photos below are searched at the precision the index runs at now).
    guard = await service.vision.guard_int8(ModelSpec.parse(index.model), [item.image for item in items])
    current = params_for(index.reverse_search, service.params)
    gather_params = replace(current, verify_top=0)  # verify the whole pool: every sweep point is a lookup
    signals: list[QuerySignals] = []
    for i, (row, item) in enumerate(zip(kept, items, strict=True)):
        photo = await service.vision.run_cpu(_wild_photo, item, items, seed, i)
        request = ReverseSearchRequest.parse({"q": photo, "limit": 10})  # as the HTTP API parses it
        # colour scored even where the index gives it no weight: the sweep may give it one
        _, gathered = await service.gather(index, request, StageTimer(), gather_params, colour_scores=True)
        signals.append(signals_of(gathered.candidates, gathered.verifications, row.product_pk))
        elapsed = time.perf_counter() - started
        yield Progress("search", i + 1, len(kept), f"searched {i + 1}/{len(kept)} calibration photos ({elapsed:.0f} s)")
    n_tune = max(1, int(round(len(signals) * (1 - holdout))))
    tune, held = signals[:n_tune], signals[n_tune:]
    best, points = await service.vision.run_cpu(sweep, tune, current)
    yield Progress("sweep", points, points, f"swept {points} knob settings")

    def report(p: RerankParams) -> dict[str, Any]:
        out: dict[str, Any] = {**recall(signals, p), "tuned": recall(tune, p)}
        if held:
            out["heldOut"] = recall(held, p)
        return {**out, "knobs": knobs_of(p)}

    yield CalibrationReport(
        before=report(current),
        after=report(best),
        knobs=knobs_of(best),
        detail={
            "index": index.name,
            "queries": len(signals),
            "tunedOn": len(tune),
            "heldOut": len(held),
            "skipped": len(sample) - len(kept),
            "sweepPoints": points,
            "seconds": round(time.perf_counter() - started, 1),
            "int8Guard": (
                {"precision": guard.precision, **guard.to_json()}
                if guard is not None
                else {"precision": inference.precision_of(index, service.vision), "status": "off"}
            ),
        },
        guard=guard,
    )


class CalibrationService:
    """Calibration as the service runs it: checks, one run per index at a time, apply."""

    def __init__(self, pool: asyncpg.Pool, reverse: ReverseSearchService, indexes: IndexAdmin) -> None:
        self.pool = pool  # the primary: the lock, and reads that must see what was just written
        self.reverse = reverse  # reading the primary only (see app.main)
        self.indexes = indexes

    async def run(
        self, index: IndexRecord, queries: int, seed: int, apply: bool
    ) -> AsyncGenerator[Progress | CalibrationReport, None]:
        """Progress events, then the report. Raises ApiError (409) before the first event when the
        index cannot be calibrated now; later failures raise from the event they interrupt."""
        if not index.reverse_search_enabled:
            raise ApiError(409, "reverse_search_disabled",
                           "reverse image search is not enabled for this index; enable it in its settings first")
        stats = await self.indexes.statistics(index)
        if stats.features_pending or stats.embeddings_pending:
            raise ApiError(
                409, "index_not_ready",
                f"the index is still computing {stats.features_pending} products' local features and "
                f"{stats.embeddings_pending} embeddings; calibrate when /stats shows none pending",
            )
        async with indexes_sql.calibration_lock(self.pool, index.pk) as got:
            if not got:
                raise ApiError(409, "calibration_running",
                               f"a calibration of {index.name!r} is already running; wait for it to finish")
            yield Progress("start", 0, queries, f"calibrating {index.name!r} on up to {queries} photos")
            report: CalibrationReport | None = None
            try:
                async for event in calibrate(self.reverse, index, queries, seed):
                    if isinstance(event, CalibrationReport):
                        report = event
                    else:
                        yield event
            except (asyncio.CancelledError, GeneratorExit):  # the client went away: so does the work
                log.info("calibration of %r stopped before its end: the client went away", index.name)
                raise
            assert report is not None
            if apply:
                await self._apply(index, report)
                yield Progress("apply", 1, 1, f"stored the knobs in {index.name!r}'s settings")
            yield report

    async def _apply(self, index: IndexRecord, report: CalibrationReport) -> None:
        # The settings as they are now (a PATCH may have come during the run), and the same index
        # (not one deleted and created again under its name meanwhile).
        current = await self.indexes.find(index.name)
        if current is None or current.pk != index.pk:
            raise ApiError(409, "index_changed", f"index {index.name!r} was deleted during the calibration")
        await self.indexes.change_settings(current, {"reverseImageSearch": report.knobs})
        if report.guard is not None:
            await inference.store_verdict(self.pool, current, self.reverse.vision, report.guard, "calibration")
        report.applied = True
