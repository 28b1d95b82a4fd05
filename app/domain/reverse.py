"""Reverse image search: query crops -> merged filtered candidate pool -> geometric re-ranking.

1. product-centred crop boxes of the query photo; the whole image plus as many crops as
   the model's speed allows are embedded in one batch, while the photo's local features
   are extracted;
2. for each embedded crop a filtered nearest-neighbour pool by embedding, and for each
   crop box one by the aggregate of the local features inside it (model-independent),
   merged (best score per product and signal);
3. the candidates with the best prior score have their stored local features matched
   against the query's in one batched pass: RANSAC homography, inlier count;
4. a final score combining global similarity, aggregate similarity and verification
   (domain.rerank).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import numpy as np

from app.domain.queries import ReverseSearchRequest, shape_hit
from app.domain.rerank import (
    Candidate,
    RerankParams,
    combine_scores,
    crops_for_model,
    merge_crop_neighbours,
    select_for_verification,
)
from app.domain.search import StageTimer, compile_where
from app.storage import search as search_sql
from app.storage.indexes import IndexRecord
from app.storage.params import SqlParams
from app.storage.replicas import Database
from app.vision import aggregate, local_features
from app.vision.crops import crop_images, query_boxes
from app.vision.model import ModelSpec
from app.vision.service import VisionService


def _boxes_and_crops(image: Any, n_crops: int) -> tuple[list[Any], list[Any]]:
    """All crop boxes (for the keypoint aggregates) and the images of the first `n_crops` (to embed)."""
    boxes = query_boxes(image)
    return boxes, crop_images(image, boxes[:n_crops])


def _best_cosines(vectors: np.ndarray, queries: np.ndarray) -> float:
    return float(np.max(queries @ (vectors / max(float(np.linalg.norm(vectors)), 1e-9))))


class ReverseSearchService:
    def __init__(self, database: Database, vision: VisionService, params: RerankParams | None = None):
        self.db = database
        self.vision = vision
        self.params = params or RerankParams()

    async def _crop_count(self, knobs: dict[str, Any], spec: ModelSpec) -> int:
        value = knobs.get("queryCrops", "auto")
        if value == "auto":
            return crops_for_model(await self.vision.single_image_ms(spec), self.params)
        return int(value)

    async def search(
        self, index: IndexRecord, request: ReverseSearchRequest, timer: StageTimer
    ) -> list[dict[str, Any]]:
        knobs = index.reverse_search
        pool_size = int(knobs.get("candidatePool", self.params.pool_size))
        spec = ModelSpec.parse(index.model)
        where_sql, params, filtered = compile_where(request.filter)
        loaded = await self.vision.load(request.q)
        n_crops = await self._crop_count(knobs, spec)
        timer.lap("decode")
        boxes, crops = await self.vision.run_cpu(_boxes_and_crops, loaded.image, n_crops)
        # Query features are extracted while the crops are embedded (both off the loop).
        features_task = self.vision.run_cpu(local_features.extract_query_features, loaded.image)
        embeddings = await self.vision.embed(spec, crops)
        timer.lap("embed")
        query_features = await features_task
        aggregates = await self.vision.run_cpu(aggregate.box_aggregates, query_features, boxes)
        timer.lap("features")

        queries = [search_sql.VectorQuery(e, "embedding", pool_size) for e in embeddings]
        if self.params.aggregate_pool:
            queries += [search_sql.VectorQuery(a, "local_aggregate", self.params.aggregate_pool) for a in aggregates]
        async def candidates_from(conn: asyncpg.Connection) -> tuple[list[Candidate], list[Any], dict[Any, Any]]:
            found = await search_sql.nearest_many(
                conn, index, queries, where_sql, SqlParams(params.values), filtered=filtered
            )
            # each product keeps its best cosine per signal, over the crops
            global_scores: dict[int, float] = merge_crop_neighbours(found[: len(embeddings)])  # type: ignore[assignment]
            aggregate_scores: dict[int, float] = merge_crop_neighbours(found[len(embeddings) :])  # type: ignore[assignment]
            keys = list({**global_scores, **aggregate_scores})
            # a candidate found by one signal is scored by the other too
            missing = [k for k in keys if k not in global_scores or (len(aggregates) and k not in aggregate_scores)]
            if missing:
                vectors = await search_sql.candidate_vectors(conn, index, missing)
                for key, (embedding, agg) in vectors.items():
                    global_scores.setdefault(key, _best_cosines(embedding, embeddings))
                    if agg is not None and len(aggregates):
                        aggregate_scores.setdefault(key, _best_cosines(agg, aggregates))
            candidates = [Candidate(k, global_scores.get(k, 0.0), None, aggregate_scores.get(k)) for k in keys]
            # the final top `limit` always comes from the verified set (unverified priors are lower)
            to_verify = select_for_verification(candidates, self.params)
            details = await search_sql.candidate_details(conn, index, to_verify)  # type: ignore[arg-type]
            return candidates, to_verify, details

        candidates, to_verify, details = await self.db.read(candidates_from)
        timer.lap("sql")

        stored = {k: details[k].features for k in to_verify if k in details}
        with_features = [k for k, row in stored.items() if row is not None]
        verifications = await self.vision.run_cpu(
            local_features.verify_candidates,
            query_features,
            [local_features.deserialize(stored[k]) for k in with_features],  # type: ignore[arg-type]
        )
        verified = dict(zip(with_features, verifications, strict=True))
        candidates = [
            Candidate(c.product_key, c.global_score, verified.get(c.product_key), c.aggregate_score)
            for c in candidates
        ]
        ranked = [(k, score) for k, score in combine_scores(candidates, self.params) if k in details]
        timer.lap("rerank")
        return [shape_hit(details[k].doc, score, request.attributes) for k, score in ranked[: request.limit]]
