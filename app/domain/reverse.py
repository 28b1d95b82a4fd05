"""Reverse image search: query crops -> merged filtered candidate pool -> geometric re-ranking.

1. product-centred crop boxes of the query photo; the whole image plus as many crops as
   the model's speed allows are embedded in one batch, while the photo's local features
   are extracted;
2. for each embedded crop a filtered nearest-neighbour pool by embedding, and for each
   crop box one by the aggregate of the local features inside it (model-independent),
   merged (best score per product and signal);
3. the candidates with the best prior score have their stored local features matched
   against the query's in one batched pass: RANSAC homography, inlier count, and where
   the product lies in the photo (`_match`);
4. a final score combining global similarity, aggregate similarity and verification
   (domain.rerank), with the index's own knobs (index settings, `lookalike calibrate`).

With `regions`, repeated verification finds further products (domain.regions). The photo
gets keypoints of its own for it (`region_features`: more of them, at more resolution, since
each product is a fraction of the frame); the keypoints of each found product are removed,
and what is left is searched again — keypoint-cluster, saliency and window boxes of the
residual keypoints, retrieved by their aggregates and their crops' embeddings. Then each
region's crop retrieves its own neighbours (by embedding and by its keypoints' aggregate),
those not verified against all of the photo yet are verified in one pass for all regions (a
place that pass verifies is a region too), and the candidates verified at its place compete as
that object's identity (`regions.rank_members`), ahead of unverified neighbours. A candidate
verified more than once keeps its strongest verification (`regions.keep_stronger`).
All the regions stage verifies is bounded by one more pass (`verify_top`
candidates) per found region (`regions.VerifyBudget`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import numpy as np
from PIL import Image

from app.domain import inference
from app.domain import regions as regions_mod
from app.domain.queries import ReverseSearchRequest, shape_hit
from app.domain.rerank import (
    Candidate,
    RerankParams,
    answer_settled,
    combine_scores,
    counts_as_verified,
    crops_for_model,
    merge_crop_neighbours,
    prior_score,
    select_for_verification,
    verification_settled,
)
from app.domain.search import StageTimer, request_filter
from app.filters import FilterNode
from app.storage import search as search_sql
from app.storage.indexes import IndexRecord
from app.storage.replicas import Database
from app.vision import aggregate, colour, local_features
from app.vision.crops import crop_boxes, crop_images, keypoint_cluster_boxes, query_boxes, window_boxes
from app.vision.model import ModelSpec
from app.vision.service import VisionService

# index settings (camelCase) -> RerankParams fields: the knobs `lookalike calibrate` tunes
SCORING_KNOBS = {
    "aggregateWeight": "aggregate_weight",
    "verifyWeight": "verify_weight",
    "verifyTop": "verify_top",
    "minInliers": "min_inliers",
    "inlierSaturation": "inlier_saturation",
    "matchWeight": "match_weight",
    "matchSaturation": "match_saturation",
    "colourWeight": "colour_weight",
    "prominenceArea": "prominence_area",
}


def params_for(knobs: dict[str, Any], base: RerankParams) -> RerankParams:
    """The service's re-ranking parameters with the index's stored knobs applied."""
    changes = {field_name: knobs[name] for name, field_name in SCORING_KNOBS.items() if name in knobs}
    if "candidatePool" in knobs:
        changes["pool_size"] = int(knobs["candidatePool"])
    if "colourPool" in knobs:
        changes["colour_pool"] = int(knobs["colourPool"])
    if "verifySettle" in knobs:
        changes["settle_top"] = int(knobs["verifySettle"])
    if "regionMinInliers" in knobs:  # regions only: calibration measures one product per photo
        changes["region_min_inliers"] = int(knobs["regionMinInliers"])
    return replace(base, **changes) if changes else base


# Fewer candidates than this per CPU worker are verified on one (a thread hop costs more).
MIN_VERIFY_SHARE = 12


def verification_shares(sizes: Sequence[int], workers: int) -> list[list[int]]:
    """Indices of the candidates (by keypoint count `sizes`) for each CPU worker: dealt in order
    of size, so every share has small and large ones alike."""
    n = max(1, min(workers, len(sizes) // MIN_VERIFY_SHARE))
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    return [order[k::n] for k in range(n)] if order else []


def _boxes_and_crops(image: Any, n_crops: int) -> tuple[list[Any], list[Any]]:
    """All crop boxes (for the keypoint aggregates) and the images of the first `n_crops` (to embed)."""
    boxes = query_boxes(image)
    return boxes, crop_images(image, boxes[:n_crops])


def _box_colours(image: Image.Image, boxes: list[Any], want_colour: bool) -> np.ndarray:
    """The crop boxes' colour descriptors when the colour cue is on (else none)."""
    return colour.box_colours(image, boxes) if want_colour else np.zeros((0, colour.COLOUR_DIMS), np.float32)


def _uses_colour(params: RerankParams) -> bool:
    return params.colour_weight > 0 or params.colour_pool > 0


def _in_every(per_query: Sequence[Iterable[tuple[Hashable, float]]]) -> set[Hashable]:
    """The products among the neighbours of every one of these queries (their best cosine is known)."""
    sets = [{key for key, _ in neighbours} for neighbours in per_query]
    return set.intersection(*sets) if sets else set()


def match_of(
    v: local_features.Verification | None,
    params: RerankParams,
    catalog: local_features.LocalFeatures | None = None,
    query: local_features.LocalFeatures | None = None,
) -> dict[str, Any] | None:
    """`_match` of a hit: where in the query photo (its pixels, as decoded) verification found it;
    with both feature sets (`explain`), also the inlier pairs and the catalog image's size."""
    if v is None or v.box is None or not counts_as_verified(v, params):
        return None
    x0, y0, x1, y1 = v.box
    match: dict[str, Any] = {
        "box": [int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))],
        "inliers": v.inliers,
    }
    if catalog is not None and query is not None and v.inlier_pairs is not None:
        q_xy = query.keypoints[v.inlier_pairs[:, 0]]
        c_xy = catalog.keypoints[v.inlier_pairs[:, 1]]
        match["pairs"] = [
            [round(float(a), 1), round(float(b), 1), round(float(c), 1), round(float(d), 1)]
            for (a, b), (c, d) in zip(q_xy, c_xy, strict=True)
        ]
        match["catalogSize"] = [catalog.image_width, catalog.image_height]
    return match


def _painted_over(image: Image.Image, boxes: list[regions_mod.Box]) -> Image.Image:
    """The photo with the found products painted over in its mean colour."""
    w, h = image.size
    fill = tuple(int(c) for c in np.asarray(image.reduce(8) if min(w, h) >= 64 else image).reshape(-1, 3).mean(0))
    masked = image.copy()
    for x0, y0, x1, y1 in boxes:
        masked.paste(fill, (int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))))
    return masked


def region_features(image: Image.Image) -> local_features.LocalFeatures:
    """The photo's keypoints for finding several products: more of them, at more of its resolution,
    than one product's search uses (each product of a shelf is a fraction of the frame)."""
    return local_features.extract_features(image, regions_mod.REGION_MAX_KEYPOINTS, regions_mod.REGION_MAX_SIDE)


def _outside(features: local_features.LocalFeatures, boxes: list[regions_mod.Box]) -> local_features.LocalFeatures:
    """The keypoints away from the found products' boxes."""
    x, y = features.keypoints[:, 0], features.keypoints[:, 1]
    margin = 0.02 * max(features.image_width, features.image_height)
    keep = np.ones(len(features), bool)
    for x0, y0, x1, y1 in boxes:
        keep &= ~((x >= x0 - margin) & (x < x1 + margin) & (y >= y0 - margin) & (y < y1 + margin))
    return local_features.LocalFeatures(
        features.keypoints[keep],
        features.descriptors[keep],
        features.colours[keep],
        features.image_width,
        features.image_height,
    )


def _residual(
    image: Image.Image, features: local_features.LocalFeatures, boxes: list[regions_mod.Box]
) -> tuple[Image.Image, local_features.LocalFeatures]:
    """What is left once the found products are removed: the photo with them painted over (for
    saliency) and the region keypoints away from them."""
    return _painted_over(image, boxes), _outside(features, boxes)


def _proposal_boxes(
    image: Image.Image, masked: Image.Image, residual: local_features.LocalFeatures, n_crops: int
) -> tuple[list[Any], list[Any], list[Any]]:
    """Where else a product may be: (boxes to describe by aggregates, boxes to embed, their crops).

    Keypoint clusters of what is left and the salient mass of the photo with the found products
    painted over (both also embedded), plus fixed windows (aggregates only: no model pass).
    """
    w, h = image.size
    clusters = keypoint_cluster_boxes(residual.keypoints, w, h)
    salient = crop_boxes(masked, ("saliency", "peak"))
    embed_boxes = [b for b in [*clusters, *salient] if regions_mod.is_new_place(b, [])][:n_crops]
    describe = [*clusters, *salient, *window_boxes(w, h)]
    return describe, embed_boxes, crop_images(image, embed_boxes)


def settled_by_verification(gathered: Gathered, params: RerankParams) -> bool:
    """Whether the verified pool's best hit settles the answer (`rerank.answer_settled`)."""
    ranked = gathered.ranked(params)
    return bool(ranked) and answer_settled(gathered.verifications.get(ranked[0][0]), params)


# candidates verified per pass when verification may stop early: small enough to stop soon,
# large enough that the batched matching keeps its efficiency
VERIFY_CHUNK = 10


@dataclass
class Gathered:
    """Everything the final scoring needs, computed once: any knobs can then re-score it."""

    candidates: dict[Hashable, Candidate]
    verifications: dict[Hashable, local_features.Verification]
    details: dict[Hashable, search_sql.CandidateDetail]
    query_features: local_features.LocalFeatures
    features_of: dict[Hashable, local_features.LocalFeatures] = field(default_factory=dict)
    # the candidates verified against all of the photo's keypoints (not only what a residual pass left)
    whole: set[Hashable] = field(default_factory=set)
    # the candidates a residual pass verified against what it left of the photo
    left_over: set[Hashable] = field(default_factory=set)

    def ranked(self, params: RerankParams) -> list[tuple[Hashable, float]]:
        cands = [
            replace(c, verification=self.verifications.get(k)) for k, c in self.candidates.items() if k in self.details
        ]
        return combine_scores(cands, params)


@dataclass
class ReverseResult:
    hits: list[dict[str, Any]]
    regions: list[dict[str, Any]] | None = None


@dataclass
class _Query:
    """One request's decoded photo, filter and knobs."""

    index: IndexRecord
    request: ReverseSearchRequest
    spec: ModelSpec
    image: Image.Image
    where: FilterNode | None
    params: RerankParams
    n_crops: int
    # `queryCrops` "auto": the crops past the whole photo may wait for verification's verdict
    crops_on_demand: bool = False


class ReverseSearchService:
    def __init__(self, database: Database, vision: VisionService, params: RerankParams | None = None):
        self.db = database
        self.vision = vision
        self.params = params or RerankParams()

    def params_of(self, index: IndexRecord) -> RerankParams:
        return params_for(index.reverse_search, self.params)

    async def _crop_count(self, knobs: dict[str, Any], spec: ModelSpec, params: RerankParams, precision: str) -> int:
        value = knobs.get("queryCrops", "auto")
        if value == "auto":
            return crops_for_model(await self.vision.single_image_ms(spec, precision), params)
        return int(value)

    async def _prepare(
        self, index: IndexRecord, request: ReverseSearchRequest, params: RerankParams | None
    ) -> _Query:
        knobs = index.reverse_search
        params = params or params_for(knobs, self.params)
        spec = ModelSpec.parse(index.model)
        where = request_filter(request.filter)
        loaded = await self.vision.load(request.q)
        n_crops = await self._crop_count(knobs, spec, params, inference.precision_of(index, self.vision))
        on_demand = knobs.get("queryCrops", "auto") == "auto"
        return _Query(index, request, spec, loaded.image, where, params, n_crops, on_demand)

    async def _retrieve(
        self,
        conn: asyncpg.Connection,
        query: _Query,
        embeddings: np.ndarray,
        aggregates: np.ndarray,
        pool_size: int,
        aggregate_pool: int,
        colours: np.ndarray | None = None,
    ) -> dict[Hashable, Candidate]:
        """Candidates of these crop embeddings, box aggregates and box colours, each scored by every signal."""
        colours = colours if colours is not None else np.zeros((0, colour.COLOUR_DIMS), np.float32)
        colour_pool = query.params.colour_pool if len(colours) else 0
        queries = [search_sql.VectorQuery(e, "embedding", pool_size) for e in embeddings]
        if aggregate_pool:
            queries += [search_sql.VectorQuery(a, "local_aggregate", aggregate_pool) for a in aggregates]
        n_aggregate = len(queries) - len(embeddings)
        if colour_pool:
            queries += [search_sql.VectorQuery(c, "colour", colour_pool) for c in colours]
        found = await search_sql.nearest_many(conn, query.index, queries, query.where)
        by_aggregate = found[len(embeddings) : len(embeddings) + n_aggregate]
        by_colour = found[len(embeddings) + n_aggregate :]
        # each product keeps its best cosine per signal, over the crops
        global_scores: dict[Hashable, float] = merge_crop_neighbours(found[: len(embeddings)])
        aggregate_scores: dict[Hashable, float] = merge_crop_neighbours(by_aggregate)
        colour_scores: dict[Hashable, float] = merge_crop_neighbours(by_colour)
        keys = list({**global_scores, **aggregate_scores, **colour_scores})
        # A candidate keeps its best cosine over every crop and box, not only over those whose
        # nearest neighbours it was among (another crop may be closer to it yet have closer
        # neighbours still): a candidate missing from some list is scored from its vectors.
        everywhere_global = _in_every(found[: len(embeddings)])
        everywhere_aggregate = _in_every(by_aggregate) if aggregate_pool else set()
        everywhere_colour = _in_every(by_colour) if colour_pool else set()
        missing = [
            k
            for k in keys
            if k not in everywhere_global
            or (len(aggregates) and k not in everywhere_aggregate)
            or (len(colours) and k not in everywhere_colour)
        ]
        if missing:
            signals = {"embedding": embeddings, "local_aggregate": aggregates, "colour": colours}
            cosines = await search_sql.candidate_cosines(conn, query.index, missing, signals)  # type: ignore[arg-type]
            for key, best in cosines.items():
                if key not in everywhere_global:
                    global_scores[key] = best.embedding if best.embedding is not None else 0.0
                if best.aggregate is not None and key not in everywhere_aggregate:
                    aggregate_scores[key] = best.aggregate
                if best.colour is not None and key not in everywhere_colour:
                    colour_scores[key] = best.colour
        return {
            k: Candidate(k, global_scores.get(k, 0.0), None, aggregate_scores.get(k), colour_scores.get(k))
            for k in keys
        }

    async def _verify(
        self, gathered: Gathered, keys: list[Hashable], features: local_features.LocalFeatures
    ) -> None:
        """One verification pass of these candidates against `features` (all of the photo or what is left)."""
        stored = {k: gathered.details[k].features for k in keys if k in gathered.details}
        with_features = [k for k, row in stored.items() if row is not None]
        for k in with_features:
            if k not in gathered.features_of:
                gathered.features_of[k] = local_features.deserialize(stored[k])  # type: ignore[arg-type]
        # Matching is numpy and OpenCV with one BLAS thread (see VisionService): the candidates are
        # split over the CPU workers, each share mixing small and large ones so they end together.
        sizes = [len(gathered.features_of[k]) for k in with_features]
        shares = verification_shares(sizes, self.vision.settings.cpu_workers)
        verified = await asyncio.gather(
            *(
                self.vision.run_cpu(
                    local_features.verify_candidates, features, [gathered.features_of[with_features[i]] for i in share]
                )
                for share in shares
            )
        )
        pairs = [
            (with_features[i], v)
            for share, vs in zip(shares, verified, strict=True)
            for i, v in zip(share, vs, strict=True)
        ]
        # one product's search verifies each candidate once; the regions' passes may verify it again
        # against other keypoints (what is left of the photo, more of its resolution): the stronger stays
        regions_mod.keep_stronger(gathered.verifications, pairs)  # type: ignore[arg-type]

    async def _verify_settling(
        self, gathered: Gathered, keys: list[Hashable], params: RerankParams, top: int
    ) -> None:
        """Verify `keys` (best prior first) in chunks, stopping once the `top` best hits cannot change."""
        if top < 1:
            await self._verify(gathered, keys, gathered.query_features)
            return
        for end in range(VERIFY_CHUNK, len(keys) + VERIFY_CHUNK, VERIFY_CHUNK):
            await self._verify(gathered, keys[end - VERIFY_CHUNK : end], gathered.query_features)
            settled = [
                replace(gathered.candidates[k], verification=gathered.verifications.get(k))
                for k in keys[:end]
                if k in gathered.details
            ]
            rest = keys[end:]
            next_prior = prior_score(gathered.candidates[rest[0]], params) if rest else None
            if verification_settled(settled, next_prior, top, params):
                return

    async def gather(
        self,
        index: IndexRecord,
        request: ReverseSearchRequest,
        timer: StageTimer,
        params: RerankParams | None = None,
        settle_top: int = 0,
        colour_scores: bool = False,
        adaptive_crops: bool = False,
    ) -> tuple[_Query, Gathered]:
        """Crops, features, candidate pool and verification of the `verify_top` best by prior;
        with `settle_top`, only until the ranking's first `settle_top` cannot change (0: all of them);
        with `colour_scores`, candidates carry their colour score even where it has no weight; with
        `adaptive_crops` and the index's `queryCrops` "auto", the crops beyond the whole photo are
        embedded only when verification of the whole photo's pool does not settle the answer
        (`settled_by_verification`)."""
        query = await self._prepare(index, request, params)
        timer.lap("decode")
        p = query.params
        precision = inference.precision_of(query.index, self.vision)
        # Query features are extracted while the crops are cut and embedded (all off the loop): a
        # task, because a bare coroutine would not start the extraction until it was awaited; the
        # crop boxes' colours likewise, once the boxes are known.
        features_task = asyncio.ensure_future(
            self.vision.run_cpu(local_features.extract_query_features, query.image)
        )
        colours_task: asyncio.Future[np.ndarray] | None = None
        try:
            boxes, crops = await self.vision.run_cpu(_boxes_and_crops, query.image, query.n_crops)
            colours_task = asyncio.ensure_future(
                self.vision.run_cpu(_box_colours, query.image, boxes, colour_scores or _uses_colour(p))
            )
            first = crops[:1] if adaptive_crops and query.crops_on_demand else crops
            embeddings = await self.vision.embed(query.spec, first, precision)
        except BaseException:
            features_task.cancel()
            if colours_task is not None:
                colours_task.cancel()
            raise
        timer.lap("embed")
        query_features = await features_task
        colours = await colours_task
        aggregates = await self.vision.run_cpu(aggregate.box_aggregates, query_features, boxes)
        timer.lap("features")

        async def pool_and_details(conn: asyncpg.Connection) -> tuple[dict[Hashable, Candidate], list[Any], Any]:
            candidates = await self._retrieve(
                conn, query, embeddings, aggregates, p.pool_size, p.aggregate_pool, colours
            )
            # the final top `limit` always comes from the verified set (unverified priors are lower)
            to_verify = select_for_verification(candidates.values(), p)
            details = await search_sql.candidate_details(conn, index, to_verify)  # type: ignore[arg-type]
            return candidates, to_verify, details

        candidates, to_verify, details = await self.db.read(pool_and_details)
        timer.lap("sql")
        gathered = Gathered(candidates, {}, details, query_features)  # type: ignore[arg-type]
        await self._verify_settling(gathered, to_verify, p, settle_top)
        gathered.whole.update(to_verify)
        timer.lap("verify")
        later = crops[len(first) :]
        if later and not settled_by_verification(gathered, p):
            await self._add_crops(query, gathered, later, aggregates, colours)
            timer.lap("crops")
        return query, gathered

    async def _add_crops(
        self,
        query: _Query,
        gathered: Gathered,
        crops: list[Image.Image],
        aggregates: np.ndarray,
        colours: np.ndarray,
    ) -> None:
        """Widen the pool by the crops' embeddings, as if they had been embedded with the whole photo:
        every candidate keeps its best cosine over all the embedded crops, the crops' neighbours join
        the pool scored by every signal, and the best by prior not verified yet are verified."""
        p = query.params
        embeddings = await self.vision.embed(query.spec, crops, inference.precision_of(query.index, self.vision))

        async def widen(conn: asyncpg.Connection) -> list[Hashable]:
            queries = [search_sql.VectorQuery(e, "embedding", p.pool_size) for e in embeddings]
            found = await search_sql.nearest_many(conn, query.index, queries, query.where)
            by_crops = merge_crop_neighbours(found)
            everywhere = _in_every(found)
            unscored = [k for k in {**gathered.candidates, **by_crops} if k not in everywhere]
            signals = {"embedding": embeddings, "local_aggregate": aggregates, "colour": colours}
            cosines = await search_sql.candidate_cosines(conn, query.index, unscored, signals)  # type: ignore[arg-type]
            for key in {**by_crops, **dict.fromkeys(unscored)}:
                best = cosines.get(key)  # type: ignore[call-overload]
                cosine = by_crops.get(key) if key in everywhere else None
                if cosine is None:
                    cosine = best.embedding if best is not None and best.embedding is not None else 0.0
                old = gathered.candidates.get(key)
                if old is not None:
                    gathered.candidates[key] = replace(old, global_score=max(old.global_score, cosine))
                    continue
                aggregate_score = best.aggregate if best is not None else None
                colour_score = best.colour if best is not None else None
                gathered.candidates[key] = Candidate(key, cosine, None, aggregate_score, colour_score)
            to_verify = [k for k in select_for_verification(gathered.candidates.values(), p) if k not in gathered.whole]
            missing = [k for k in to_verify if k not in gathered.details]
            if missing:
                gathered.details.update(await search_sql.candidate_details(conn, query.index, missing))  # type: ignore[arg-type]
            return to_verify

        to_verify = await self.db.read(widen)
        await self._verify(gathered, to_verify, gathered.query_features)
        gathered.whole.update(to_verify)

    def _hit(
        self, gathered: Gathered, key: Hashable, score: float, query: _Query, params: RerankParams | None = None
    ) -> dict[str, Any]:
        hit = shape_hit(gathered.details[key].doc, score, query.request.attributes)
        explain = query.request.explain
        match = match_of(
            gathered.verifications.get(key),
            params or query.params,
            gathered.features_of.get(key) if explain else None,
            gathered.query_features if explain else None,
        )
        if match is not None:
            hit["_match"] = match
        return hit

    async def search(
        self, index: IndexRecord, request: ReverseSearchRequest, timer: StageTimer
    ) -> ReverseResult:
        # regions read every verification (where else products lie): those verify all verify_top
        settle = 0 if request.regions else min(self.params_of(index).settle_top, request.limit)
        # one product's search embeds the crops only where verification leaves the answer open; regions
        # read every candidate of every crop
        query, gathered = await self.gather(
            index, request, timer, settle_top=settle, adaptive_crops=not request.regions
        )
        ranked = gathered.ranked(query.params)
        hits = [self._hit(gathered, k, score, query) for k, score in ranked[: request.limit]]
        timer.lap("rerank")
        if not request.regions:
            return ReverseResult(hits)
        features = await self.vision.run_cpu(region_features, query.image)
        budget = regions_mod.VerifyBudget(query.params.verify_top or len(gathered.candidates))
        shelf = replace(query, params=regions_mod.shelf_params(query.params))
        found = await self._find_regions(shelf, gathered, gathered.ranked(shelf.params), features, budget)
        regions = await self._region_hits(shelf, gathered, found, features, budget)
        timer.lap("regions")
        return ReverseResult(hits, regions)

    async def _find_regions(
        self,
        query: _Query,
        gathered: Gathered,
        ranked: list[tuple[Hashable, float]],
        features: local_features.LocalFeatures,
        budget: regions_mod.VerifyBudget,
    ) -> list[regions_mod.Region]:
        """Regions best-first: verified places, then residual passes while the budget allows."""
        p = query.params
        at_a_place = regions_mod.region_params(p)
        found: list[regions_mod.Region] = []
        passes = 0
        while len(found) < regions_mod.MAX_REGIONS:
            region = regions_mod.next_region(ranked, gathered.verifications, found, at_a_place)
            if region is not None:
                found.append(region)
                continue
            if passes >= max(1, len(found)) or budget.left(len(found)) == 0:
                break
            passes += 1
            if not await self._residual_pass(query, gathered, found, features, budget):
                break
            ranked = gathered.ranked(p)
        return found

    async def _residual_pass(
        self,
        query: _Query,
        gathered: Gathered,
        found: list[regions_mod.Region],
        features: local_features.LocalFeatures,
        budget: regions_mod.VerifyBudget,
    ) -> bool:
        """Search what is left of the photo once the found products' keypoints are removed; False: nothing to search."""
        p = query.params
        masked, residual = await self.vision.run_cpu(_residual, query.image, features, [r.box for r in found])
        if len(residual) < local_features.DEFAULT_VERIFY.min_matches:
            return False
        describe, _, crops = await self.vision.run_cpu(_proposal_boxes, query.image, masked, residual, query.n_crops)
        precision = inference.precision_of(query.index, self.vision)
        embeddings = await self.vision.embed(query.spec, crops, precision) if crops else np.zeros((0, 1), np.float32)
        aggregates = await self.vision.run_cpu(aggregate.box_aggregates, residual, describe)
        # the left-over boxes' colours (of the photo, as their crops are embedded from it), so new
        # candidates are scored and pooled by colour as the whole photo's were
        colours = await self.vision.run_cpu(_box_colours, query.image, describe, _uses_colour(p))

        async def residual_candidates(conn: asyncpg.Connection) -> list[Hashable]:
            fresh = await self._retrieve(
                conn, query, embeddings, aggregates, p.pool_size, max(p.aggregate_pool, 10), colours
            )
            for key, cand in fresh.items():
                old = gathered.candidates.get(key)
                if old is None or prior_score(cand, p) > prior_score(old, p):
                    gathered.candidates[key] = cand
            # found somewhere already: that stands; the rest (also those the whole photo did not verify:
            # its keypoint budget went elsewhere) is verified against what is left
            located = {k for k, v in gathered.verifications.items() if counts_as_verified(v, p)}
            # the regions' own pass (their look-alikes) is kept its share of the budget
            # — not those an earlier pass verified against what it left: this pass leaves less of the photo
            untried = [c for k, c in fresh.items() if k not in located and k not in gathered.left_over]
            unlocated = select_for_verification(untried, p)
            new = budget.take(unlocated, len(found), reserve=regions_mod.REGION_POOL * len(found))
            missing = [k for k in new if k not in gathered.details]
            if missing:
                gathered.details.update(await search_sql.candidate_details(conn, query.index, missing))  # type: ignore[arg-type]
            return new

        new = await self.db.read(residual_candidates)
        await self._verify(gathered, new, residual)
        gathered.left_over.update(new)
        return True

    async def _region_hits(
        self,
        query: _Query,
        gathered: Gathered,
        found: list[regions_mod.Region],
        features: local_features.LocalFeatures,
        budget: regions_mod.VerifyBudget,
    ) -> list[dict[str, Any]]:
        """Each region's hits: its place's own candidates verified there, best-first.

        A region's crop retrieves its nearest neighbours by embedding and by the aggregate of the
        keypoints inside it (the look-alikes of what was found there, which the whole photo's pool
        may have missed); those not verified yet are verified in one pass for all regions. The
        candidates verified at the region's place then compete as one object's identity
        (`regions.identity_params`), ahead of the crop's unverified neighbours.
        """
        if not found:
            return []
        p = query.params
        at_a_place = regions_mod.region_params(p)
        identity = regions_mod.identity_params(p)
        precision = inference.precision_of(query.index, self.vision)

        async def describe(regions: list[regions_mod.Region]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
            """The regions' crop embeddings, keypoint aggregates (of the regions stage's keypoints: a
            region is a fraction of the frame; an empty row where too few describe one) and colours
            (when the colour cue is on)."""
            boxes = [tuple(int(round(v)) for v in r.box) for r in regions]
            crops = await self.vision.run_cpu(crop_images, query.image, boxes)
            embedded = await self.vision.embed(query.spec, crops, precision)
            per_box = [await self.vision.run_cpu(aggregate.box_aggregates, features, [b]) for b in boxes]
            colours = await self.vision.run_cpu(colour.box_colours, query.image, boxes) if _uses_colour(p) else None
            return embedded, per_box, colours

        embeddings, per_box, region_colours = await describe(found)
        limit = query.request.limit
        pool = max(limit, regions_mod.REGION_POOL)

        Scores = list[dict[Hashable, float]]  # per region: product key -> cosine

        async def region_pools(conn: asyncpg.Connection) -> tuple[Scores, Scores]:
            queries = [search_sql.VectorQuery(e, "embedding", pool) for e in embeddings]
            described = [i for i, a in enumerate(per_box) if len(a)]
            queries += [search_sql.VectorQuery(per_box[i][0], "local_aggregate", pool) for i in described]
            nearest = await search_sql.nearest_many(conn, query.index, queries, query.where)
            by_crop = [dict(n) for n in nearest[: len(embeddings)]]
            by_aggregate: Scores = [{} for _ in found]
            for i, n in zip(described, nearest[len(embeddings) :], strict=True):
                by_aggregate[i] = dict(n)
            keys = {k for d in (*by_crop, *by_aggregate) for k in d}
            missing = [k for k in keys if k not in gathered.details]
            if missing:
                gathered.details.update(await search_sql.candidate_details(conn, query.index, missing))  # type: ignore[arg-type]
            return by_crop, by_aggregate

        by_crop, by_aggregate = await self.db.read(region_pools)
        pooled = list(dict.fromkeys(k for d in (*by_crop, *by_aggregate) for k in d))
        # not verified yet first; then those only verified against what was left of the photo (a
        # region found their place since, and took its keypoints) that did not verify there
        unverified = [k for k in pooled if k not in gathered.verifications]
        unverified += [
            k
            for k in pooled
            if k in gathered.verifications
            and k not in gathered.whole
            and not counts_as_verified(gathered.verifications[k], at_a_place)
        ]
        unverified = budget.take(unverified, len(found))
        if unverified:  # the regions' own verification pass (one for all of them)
            await self._verify(gathered, unverified, features)
            gathered.whole.update(unverified)
            # that pass may have verified a product somewhere no region covers yet: a region too
            # (named by what was verified there; nothing more is verified for it)
            ranked = gathered.ranked(p)
            more: list[regions_mod.Region] = []
            while len(found) + len(more) < regions_mod.MAX_REGIONS:
                region = regions_mod.next_region(ranked, gathered.verifications, [*found, *more], at_a_place)
                if region is None:
                    break
                more.append(region)
            if more:
                e, a, c = await describe(more)
                found = [*found, *more]
                embeddings = np.concatenate([embeddings, e])
                per_box += a
                if region_colours is not None and c is not None:
                    region_colours = np.concatenate([region_colours, c])
                for scores in (by_crop, by_aggregate):
                    scores += [{} for _ in more]

        async def region_candidates(conn: asyncpg.Connection) -> list[list[tuple[Hashable, float]]]:
            out_keys: list[list[tuple[Hashable, float]]] = []
            for i, region in enumerate(found):
                at_place = regions_mod.members(region, gathered.verifications, at_a_place)
                keys = list(dict.fromkeys([*at_place, *by_crop[i], *by_aggregate[i]]))
                signals = {
                    "embedding": embeddings[i : i + 1],
                    "local_aggregate": per_box[i],
                    "colour": region_colours[i : i + 1] if region_colours is not None else None,
                }
                cosines = await search_sql.candidate_cosines(conn, query.index, keys, signals)  # type: ignore[arg-type]
                cands = []
                for key in keys:
                    best = cosines.get(key)  # type: ignore[call-overload]
                    g = by_crop[i].get(key)
                    if g is None and best is not None:
                        g = best.embedding
                    a = best.aggregate if best is not None else None
                    c = best.colour if best is not None else None
                    v = gathered.verifications.get(key) if key in at_place else None
                    cands.append(Candidate(key, g or 0.0, v, a, c))
                out_keys.append(regions_mod.rank_members(cands, at_place, identity)[:limit])
            return out_keys

        out_keys = await self.db.read(region_candidates)
        out = []
        for region, ranked in zip(found, out_keys, strict=True):
            top = gathered.verifications.get(ranked[0][0]) if ranked else None
            # the region is where its identity was verified (its own box, when it has one there)
            located = top is not None and top.box is not None and counts_as_verified(top, at_a_place)
            x0, y0, x1, y1 = top.box if located else region.box  # type: ignore[union-attr]
            box = [int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))]
            hits = [self._hit(gathered, k, s, query, at_a_place) for k, s in ranked if k in gathered.details]
            out.append({"box": box, "hits": hits})
        return out
