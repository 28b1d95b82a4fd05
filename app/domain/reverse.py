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
from app.domain.rerank import Candidate, RerankParams, combine_scores, crops_for_model, select_for_verification
from app.domain.search import StageTimer, compile_where
from app.storage import search as search_sql
from app.storage.indexes import IndexRecord
from app.vision import aggregate, local_features
from app.vision.crops import crop_images, query_boxes
from app.vision.model import ModelSpec
from app.vision.service import VisionService


def _best_cosines(vectors: np.ndarray, queries: np.ndarray) -> float:
    return float(np.max(queries @ (vectors / max(float(np.linalg.norm(vectors)), 1e-9))))


class ReverseSearchService:
    def __init__(self, pool: asyncpg.Pool, vision: VisionService, params: RerankParams | None = None):
        self.pool = pool
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
        boxes = await self.vision.run_cpu(query_boxes, loaded.image)
        crops = await self.vision.run_cpu(crop_images, loaded.image, boxes[:n_crops])
        # Query features are extracted while the crops are embedded (both off the loop).
        features_task = self.vision.run_cpu(local_features.extract_query_features, loaded.image)
        embeddings = await self.vision.embed(spec, crops)
        timer.lap("embed")
        query_features = await features_task
        aggregates = await self.vision.run_cpu(aggregate.box_aggregates, query_features, boxes)
        timer.lap("features")

        global_scores: dict[int, float] = {}
        aggregate_scores: dict[int, float] = {}
        rows: dict[int, search_sql.Row] = {}
        searches = [(e, "embedding", pool_size, global_scores) for e in embeddings]
        if self.params.aggregate_pool:
            searches += [(a, "local_aggregate", self.params.aggregate_pool, aggregate_scores) for a in aggregates]
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            for vector, column, k, scores in searches:
                found = await search_sql.nearest(
                    conn,
                    index,
                    vector,
                    where_sql,
                    params,
                    k,
                    filtered=filtered,
                    ef_search=max(k, search_sql.DEFAULT_EF_SEARCH),
                    column=column,  # type: ignore[arg-type]
                )
                for row in found:
                    rows[row.product_pk] = row
                    if row.score > scores.get(row.product_pk, -2.0):
                        scores[row.product_pk] = row.score
            # a candidate found by one signal is scored by the other too
            missing = [k for k in rows if k not in global_scores or (len(aggregates) and k not in aggregate_scores)]
            if missing:
                vectors = await search_sql.candidate_vectors(conn, index, missing)
                for key, (embedding, agg) in vectors.items():
                    global_scores.setdefault(key, _best_cosines(embedding, embeddings))
                    if agg is not None and len(aggregates):
                        aggregate_scores.setdefault(key, _best_cosines(agg, aggregates))
            candidates = [
                Candidate(key, global_scores.get(key, 0.0), None, aggregate_scores.get(key)) for key in rows
            ]
            to_verify = select_for_verification(candidates, self.params)
            stored = await search_sql.local_features_of(conn, to_verify)  # type: ignore[arg-type]
        timer.lap("sql")

        with_features = [k for k in to_verify if k in stored]
        verifications = await self.vision.run_cpu(
            local_features.verify_candidates,
            query_features,
            [local_features.deserialize(stored[k]) for k in with_features],
        )
        verified = dict(zip(with_features, verifications, strict=True))
        candidates = [
            Candidate(c.product_key, c.global_score, verified.get(c.product_key), c.aggregate_score)
            for c in candidates
        ]
        ranked = combine_scores(candidates, self.params)
        timer.lap("rerank")
        return [shape_hit(rows[key].doc, score, request.attributes) for key, score in ranked[: request.limit]]  # type: ignore[index]
