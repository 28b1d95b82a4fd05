"""Search by Image, text search and browse: parse the filter, embed if needed, one SQL query."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.contract.storefront import CollectionsRequest, SimilarRequest
from app.domain import inference
from app.domain.queries import SearchRequest, shape_hit
from app.domain.storefront import StorefrontPlan, build_plan, query_words
from app.errors import bad_request, not_found
from app.filters import ID_FIELD, And, FilterError, FilterNode, In, Not, Term, parse_filter
from app.storage import search as search_sql
from app.storage import storefront as storefront_sql
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


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[dict[str, Any]]
    facets: dict[str, Any] | None  # None: no facets asked for


def plan_for(request: SearchRequest, filter_node: FilterNode | None) -> StorefrontPlan:
    return build_plan(
        filter_node=filter_node,
        facets=request.facets,
        sort=request.sort_by,
        collapse=request.collapse,
        limit=request.limit,
        offset=request.offset,
    )


class SearchService:
    """The read endpoints' database work, on a replica when one is usable (`Database.read`).

    A read may run twice (a replica fails, the primary answers), so each is a function of the
    connection only.
    """

    def __init__(self, database: Database, vision: VisionService):
        self.db = database
        self.vision = vision

    async def search(self, index: IndexRecord, request: SearchRequest, timer: StageTimer) -> SearchOutcome:
        filter_node = request_filter(request.filter)
        plan = plan_for(request, filter_node)
        facets = None if request.facets is None else {}
        spec = ModelSpec.parse(index.model)
        method = None if request.q is None or request.is_image else search_method(request.search_method, spec)
        if request.q is None or method == "LEXICAL":
            source: storefront_sql.Source = "browse" if request.q is None else "text"
            words = query_words(request.q or "")
            apart = storefront_sql.facets_apart(plan, source)
            if apart is None:
                result = await self.db.read(
                    lambda conn: storefront_sql.storefront_query(conn, index, plan, source, words=words)
                )
            else:  # the ranking and the facet pass at once, on two connections (each a read of its own)
                result = await storefront_sql.storefront_query_apart(self.db.read, index, apart, source, words=words)
            timer.lap("sql")
            hits = [shape_hit(r.doc, r.score, request.attributes) for r in result.rows]
            return SearchOutcome(hits, result.facets if facets is not None else None)
        reorder = bool(plan.sort) or plan.collapse is not None
        window = plan.sort_depth if reorder else request.limit + request.offset
        if method is not None:  # TENSOR or HYBRID: ranked by the text embedding (and the words)
            assert request.q is not None
            text = request.q
            text_embedding = (await self.vision.embed_texts(spec, [text]))[0]
            timer.lap("embed")  # tokenize + text tower (a repeated query: the cache)
            if method == "TENSOR":
                rows = await self.db.read(
                    lambda conn: search_sql.nearest(conn, index, text_embedding, filter_node, window)
                )
            else:
                rows = await self.db.read(
                    lambda conn: search_sql.hybrid_search(conn, index, text, text_embedding, filter_node, window)
                )
            return await self._finish(index, request, plan, rows, facets, timer)
        assert request.q is not None
        loaded = await self.vision.load(request.q)
        timer.lap("decode")
        embedding = (await self.vision.embed(spec, [loaded.image], inference.precision_of(index, self.vision)))[0]
        timer.lap("embed")
        rows = await self.db.read(lambda conn: search_sql.nearest(conn, index, embedding, filter_node, window))
        return await self._finish(index, request, plan, rows, facets, timer)

    async def _finish(
        self,
        index: IndexRecord,
        request: SearchRequest,
        plan: StorefrontPlan,
        rows: list[search_sql.Row],
        facets: dict[str, Any] | None,
        timer: StageTimer,
    ) -> SearchOutcome:
        """A vector-ranked query's page: sortBy / collapse over its top candidates, and facets over
        every product the filter matches (a vector ranking matches them all), in SQL like the rest."""
        timer.lap("sql")
        if plan.sort or plan.collapse is not None:
            candidates = ([r.product_pk for r in rows], [r.score for r in rows])
            result = await self.db.read(
                lambda conn: storefront_sql.storefront_query(conn, index, plan, "candidates", candidates=candidates)
            )
            hits = [shape_hit(r.doc, r.score, request.attributes) for r in result.rows]
        else:
            hits = [shape_hit(r.doc, r.score, request.attributes) for r in rows[request.offset :]]
        if facets is not None:
            counted = await self.db.read(
                lambda conn: storefront_sql.storefront_query(conn, index, plan, "browse", hits=False)
            )
            facets = counted.facets
        timer.lap("sql")
        return SearchOutcome(hits, facets)

    async def collection(self, index: IndexRecord, request: CollectionsRequest, timer: StageTimer) -> SearchOutcome:
        """The products whose productCollections hold the collection, answered like a /search browse."""
        user_filter = request_filter(request.filter)
        in_collection = Term("productCollections", request.collection_name)
        filter_node: FilterNode = in_collection if user_filter is None else And((in_collection, user_filter))
        plan = build_plan(
            filter_node=filter_node,
            facets=request.facets,
            sort=request.sort_by,
            collapse=None,
            limit=request.limit,
            offset=request.offset,
        )
        result = await self.db.read(lambda conn: storefront_sql.storefront_query(conn, index, plan, "browse"))
        timer.lap("sql")
        hits = [shape_hit(r.doc, None, request.attributes) for r in result.rows]
        return SearchOutcome(hits, result.facets if request.facets is not None else None)

    async def similar(self, index: IndexRecord, request: SimilarRequest, timer: StageTimer) -> list[dict[str, Any]]:
        """Products nearest to the mean of the given products' stored embeddings, the given ones excluded."""
        ids = list(dict.fromkeys(request.document_ids))
        wanted = [i for i in ids if "\x00" not in i]
        vectors = await self.db.read(lambda conn: search_sql.stored_embeddings(conn, index, wanted))
        missing = [i for i in ids if i not in vectors]
        if missing:
            names = ", ".join(map(repr, missing))
            raise not_found(f"documents not found (or not embedded): {names}", "document_not_found")
        unit = [v / (np.linalg.norm(v) or 1.0) for v in vectors.values()]
        query = np.mean(unit, axis=0)
        query = query / (np.linalg.norm(query) or 1.0)
        user_filter = request_filter(request.filter)
        exclude: FilterNode = Not(In(ID_FIELD, tuple(ids)))
        filter_node = exclude if user_filter is None else And((exclude, user_filter))
        timer.lap("vectors")
        rows = await self.db.read(lambda conn: search_sql.nearest(conn, index, query, filter_node, request.limit))
        timer.lap("sql")
        return [shape_hit(r.doc, r.score, request.attributes) for r in rows]


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
