"""Search by Image, text search and browse: parse the filter, embed if needed, one SQL query."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.domain.filters import FilterError, parse_filter
from app.domain.queries import SearchRequest, shape_hit
from app.storage import products as products_sql
from app.storage import search as search_sql
from app.storage.filter_sql import compile_filter
from app.storage.indexes import IndexRecord
from app.storage.params import SqlParams
from app.storage.replicas import Database
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


def compile_where(filter_text: str | None) -> tuple[str, SqlParams, bool]:
    """SQL for the filter, its parameters, and whether there is a filter at all."""
    try:
        node = parse_filter(filter_text)
    except FilterError as exc:
        raise exc.to_api_error() from exc
    params = SqlParams()
    return compile_filter(node, params, "p"), params, node is not None


class SearchService:
    """The read endpoints' database work, on a replica when one is usable (`Database.read`).

    A read may run twice (a replica fails, the primary answers), so each attempt gets its own
    copy of the filter's parameters (the statements append theirs).
    """

    def __init__(self, database: Database, vision: VisionService):
        self.db = database
        self.vision = vision

    async def search(
        self, index: IndexRecord, request: SearchRequest, timer: StageTimer
    ) -> list[dict[str, Any]]:
        where_sql, params, filtered = compile_where(request.filter)
        if request.q is None:
            rows = await self.db.read(
                lambda conn: search_sql.browse(
                    conn, index, where_sql, SqlParams(params.values), request.limit, request.offset
                )
            )
            timer.lap("sql")
            return [shape_hit(r.doc, None, request.attributes) for r in rows]
        if not request.is_image:
            text = request.q
            rows = await self.db.read(
                lambda conn: search_sql.text_search(
                    conn, index, text, where_sql, SqlParams(params.values), request.limit, request.offset
                )
            )
            timer.lap("sql")
            return [shape_hit(r.doc, r.score, request.attributes) for r in rows]
        loaded = await self.vision.load(request.q)
        timer.lap("decode")
        spec = ModelSpec.parse(index.model)
        embedding = (await self.vision.embed(spec, [loaded.image]))[0]
        timer.lap("embed")
        rows = await self.db.read(
            lambda conn: search_sql.nearest(
                conn, index, embedding, where_sql, SqlParams(params.values), request.limit + request.offset,
                filtered=filtered,
            )
        )
        timer.lap("sql")
        return [shape_hit(r.doc, r.score, request.attributes) for r in rows[request.offset :]]

    async def get_documents(self, index: IndexRecord, ids: list[str]) -> list[dict[str, Any]]:
        """get-documents results in the order asked; a product still queued or failed carries `_embedding`."""
        wanted = [i for i in ids if "\x00" not in i]
        found = await self.db.read(lambda conn: products_sql.get_documents_with_state(conn, index, wanted))
        results = []
        for product_id in ids:
            stored = found.get(product_id)
            if stored is None:
                results.append({"_id": product_id, "_found": False, "message": "document not found"})
                continue
            doc, state = stored
            results.append({**doc, "_found": True, **({"_embedding": state} if state is not None else {})})
        return results
