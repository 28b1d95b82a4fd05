"""Search by Image, text search and browse: parse the filter, embed if needed, one SQL query."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from app.domain.queries import SearchRequest, shape_hit
from app.filters import FilterError, FilterNode, parse_filter
from app.storage import search as search_sql
from app.storage.indexes import IndexRecord
from app.vision.model import ModelSpec
from app.vision.service import VisionService


@dataclass
class StageTimer:
    """Per-stage wall time in milliseconds (decode, embed, sql, rerank, ...)."""

    stages: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + (now - self._last) * 1000
        self._last = now


def request_filter(filter_text: str | None) -> FilterNode | None:
    """The request's filter as an AST (None: no filter); a 400 `invalid_filter` when it does not parse."""
    try:
        return parse_filter(filter_text)
    except FilterError as exc:
        raise exc.to_api_error() from exc


class SearchService:
    def __init__(self, pool: asyncpg.Pool, vision: VisionService):
        self.pool = pool
        self.vision = vision

    async def search(
        self, index: IndexRecord, request: SearchRequest, timer: StageTimer
    ) -> list[dict[str, Any]]:
        where = request_filter(request.filter)
        if request.q is None:
            rows = await search_sql.browse(self.pool, index, where, request.limit, request.offset)
            timer.lap("sql")
            return [shape_hit(r.doc, None, request.attributes) for r in rows]
        if not request.is_image:
            rows = await search_sql.text_search(
                self.pool, index, request.q, where, request.limit, request.offset
            )
            timer.lap("sql")
            return [shape_hit(r.doc, r.score, request.attributes) for r in rows]
        loaded = await self.vision.load(request.q)
        timer.lap("decode")
        spec = ModelSpec.parse(index.model)
        embedding = (await self.vision.embed(spec, [loaded.image]))[0]
        timer.lap("embed")
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            rows = await search_sql.nearest(conn, index, embedding, where, request.limit + request.offset)
        timer.lap("sql")
        return [shape_hit(r.doc, r.score, request.attributes) for r in rows[request.offset :]]
