"""Reverse image search: query crops -> merged filtered candidate pool -> geometric re-ranking.

1. the whole query image plus product-centred crops, embedded in one batch;
2. for each crop a filtered nearest-neighbour pool from HNSW, merged (best score per product);
3. local features of the query matched against each candidate's stored features in one
   batched pass, RANSAC homography, inlier count;
4. a final score combining global similarity and verification (domain.rerank).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.domain.queries import ReverseSearchRequest, shape_hit
from app.domain.rerank import Candidate, RerankParams, combine_scores
from app.domain.search import StageTimer, compile_where
from app.storage import search as search_sql
from app.storage.indexes import IndexRecord
from app.vision import local_features
from app.vision.crops import query_crops
from app.vision.model import ModelSpec
from app.vision.service import VisionService


class ReverseSearchService:
    def __init__(self, pool: asyncpg.Pool, vision: VisionService, params: RerankParams | None = None):
        self.pool = pool
        self.vision = vision
        self.params = params or RerankParams()

    async def search(
        self, index: IndexRecord, request: ReverseSearchRequest, timer: StageTimer
    ) -> list[dict[str, Any]]:
        knobs = index.reverse_search
        pool_size = int(knobs.get("candidatePool", self.params.pool_size))
        n_crops = int(knobs.get("queryCrops", self.params.n_crops))
        where_sql, params, filtered = compile_where(request.filter)
        loaded = await self.vision.load(request.q)
        timer.lap("decode")
        crops = await self.vision.run_cpu(query_crops, loaded.image, n_crops)
        # Query features are extracted while the crops are embedded (both off the loop).
        features_task = self.vision.run_cpu(local_features.extract_query_features, loaded.image)
        spec = ModelSpec.parse(index.model)
        embeddings = await self.vision.embed(spec, crops)
        timer.lap("embed")
        merged: dict[int, tuple[search_sql.Row, float]] = {}
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            for embedding in embeddings:
                rows = await search_sql.nearest(
                    conn,
                    index,
                    embedding,
                    where_sql,
                    params,
                    pool_size,
                    filtered=filtered,
                    ef_search=max(pool_size, search_sql.DEFAULT_EF_SEARCH),
                )
                for row in rows:
                    best = merged.get(row.product_pk)
                    if best is None or row.score > best[1]:
                        merged[row.product_pk] = (row, row.score)
            stored = await search_sql.local_features_of(conn, list(merged))
        timer.lap("sql")
        query_features = await features_task
        timer.lap("features")
        keys = list(merged)
        with_features = [k for k in keys if k in stored]
        if self.params.verify_top:
            # Verify only the globally best candidates (cost grows with pool x keypoints).
            with_features = sorted(with_features, key=lambda k: -merged[k][1])[: self.params.verify_top]
        verifications = await self.vision.run_cpu(
            local_features.verify_candidates,
            query_features,
            [local_features.deserialize(stored[k]) for k in with_features],
        )
        verified = dict(zip(with_features, verifications, strict=True))
        candidates = [Candidate(k, merged[k][1], verified.get(k)) for k in keys]
        ranked = combine_scores(candidates, self.params)
        timer.lap("rerank")
        return [shape_hit(merged[key][0].doc, score, request.attributes) for key, score in ranked[: request.limit]]
