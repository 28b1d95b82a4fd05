"""Search by Image, text search and browse: parse the filter, embed if needed, one SQL query."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.domain import inference
from app.domain.queries import SearchRequest, shape_hit
from app.errors import bad_request
from app.filters import FilterError, FilterNode, parse_filter
from app.storage import search as search_sql
from app.storage.indexes import IndexRecord
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


def request_filter(filter_text: str | None) -> FilterNode | None:
    """The request's filter as an AST (None: no filter); a 400 `invalid_filter` when it does not parse."""
    try:
        return parse_filter(filter_text)
    except FilterError as exc:
        raise exc.to_api_error() from exc


class SearchService:
    """The read endpoints' database work, on a replica when one is usable (`Database.read`).

    A read may run twice (a replica fails, the primary answers), so each is a function of the
    connection only.
    """

    def __init__(self, database: Database, vision: VisionService):
        self.db = database
        self.vision = vision

    async def search(
        self, index: IndexRecord, request: SearchRequest, timer: StageTimer
    ) -> list[dict[str, Any]]:
        where = request_filter(request.filter)
        if request.q is None:
            rows = await self.db.read(
                lambda conn: search_sql.browse(conn, index, where, request.limit, request.offset)
            )
            timer.lap("sql")
            return [shape_hit(r.doc, None, request.attributes) for r in rows]
        spec = ModelSpec.parse(index.model)
        if not request.is_image:
            method = search_method(request.search_method, spec)
            if method == "LEXICAL":
                text = request.q
                rows = await self.db.read(
                    lambda conn: search_sql.text_search(conn, index, text, where, request.limit, request.offset)
                )
                timer.lap("sql")
                return [shape_hit(r.doc, r.score, request.attributes) for r in rows]
            return await self._text_by_vector(index, spec, request, method, where, timer)
        loaded = await self.vision.load(request.q)
        timer.lap("decode")
        embedding = (await self.vision.embed(spec, [loaded.image], inference.precision_of(index, self.vision)))[0]
        timer.lap("embed")
        rows = await self.db.read(
            lambda conn: search_sql.nearest(conn, index, embedding, where, request.limit + request.offset)
        )
        timer.lap("sql")
        return [shape_hit(r.doc, r.score, request.attributes) for r in rows[request.offset :]]

    async def _text_by_vector(
        self,
        index: IndexRecord,
        spec: ModelSpec,
        request: SearchRequest,
        method: str,
        where: FilterNode | None,
        timer: StageTimer,
    ) -> list[dict[str, Any]]:
        """TENSOR: the text embedding against the image embeddings, through the filtered ANN path of
        Search by Image. HYBRID: that and the lexical ranking, fused in one statement."""
        assert request.q is not None
        embedding = (await self.vision.embed_texts(spec, [request.q]))[0]
        timer.lap("embed")  # tokenize + text tower (a repeated query: the cache)
        window = request.limit + request.offset
        text = request.q
        if method == "TENSOR":
            rows = await self.db.read(lambda conn: search_sql.nearest(conn, index, embedding, where, window))
        else:
            rows = await self.db.read(
                lambda conn: search_sql.hybrid_search(conn, index, text, embedding, where, window)
            )
        timer.lap("sql")
        return [shape_hit(r.doc, r.score, request.attributes) for r in rows[request.offset :]]


def search_method(requested: str | None, spec: ModelSpec) -> str:
    """How a text query is ranked: as asked, else HYBRID where the model embeds text, else LEXICAL."""
    if requested is None:
        return "HYBRID" if spec.has_text else "LEXICAL"
    if requested != "LEXICAL" and not spec.has_text:
        raise bad_request(
            f"searchMethod {requested} ranks products by a text embedding, but this index's model "
            f"({spec.timm_name}) has no text tower; use LEXICAL, or an index with an open_clip model",
            "search_method_unsupported",
        )
    return requested
