"""Search SQL: browse, full-text and filtered nearest neighbours, each one statement with the filter.

Filtered ANN never under-returns: a very selective filter is answered by an exact
scan over the matching rows (exact and fast there); otherwise the HNSW index is
walked with pgvector's iterative scan until `limit` rows pass the filter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import numpy as np

from app.storage.indexes import AGGREGATE_CAST, IndexRecord
from app.storage.params import SqlParams

# A filter estimated to match at most this many products is answered by an exact scan.
# At 100k products (384-d, quiet 2-core machine): exact 0.9 ms at 100 matches, 7.4 ms at
# 1,000, 67 ms at 10,000; the HNSW walk, which must skip the non-matching rows it visits,
# 107 ms at 100, 44 ms at 1,000, 1.6 ms at 10,000. They cross near 3,000.
EXACT_SCAN_MAX_ROWS = 2_000
DEFAULT_EF_SEARCH = 100  # recall@10 >= 0.95 on the ANN benchmark; see README performance
# Upper bound on tuples one iterative HNSW scan may visit before giving up.
MAX_SCAN_TUPLES = 50_000

# The vector columns of an index's vector table that nearest-neighbour search can compare.
VectorColumn = Literal["embedding", "local_aggregate"]
_VECTOR_COLUMNS = ("embedding", "local_aggregate")


def _same_index(index_param: str) -> str:
    """The index condition of filtered vector searches, deliberately unindexable (`+ 0`).

    Every product in an index matches it, so as an index condition it only adds work: the
    planner ANDed a bitmap of the whole index (all 100k rows, 4 ms; 40 ms at 1M) onto the
    filter's GIN bitmap of 3,500. The vector table is per index anyway; this stays as a
    recheck so a search can never return another index's product.
    """
    return f"p.index_pk + 0 = {index_param}"


def _compared_vector(
    local: SqlParams, index: IndexRecord, column: VectorColumn, vector: np.ndarray
) -> tuple[str, str, str]:
    """(column expression, vector parameter, presence condition) for comparing `vector` with `column`."""
    if column not in _VECTOR_COLUMNS:
        raise ValueError(f"unknown vector column {column!r}")
    cast = index.vector_cast if column == "embedding" else AGGREGATE_CAST
    vector_param = local.add(vector.astype(np.float32), cast)
    col = f"v.{column}"  # one of two fixed names, checked above
    # products without a local aggregate are skipped, not ranked last
    present = "" if column == "embedding" else f" AND {col} IS NOT NULL"
    return col, vector_param, present


@dataclass(frozen=True)
class Row:
    product_pk: int
    product_id: str
    doc: dict[str, Any]
    score: float


def _rows(records: list[asyncpg.Record]) -> list[Row]:
    return [
        Row(
            r["pk"],
            r["product_id"],
            json.loads(r["doc"]),
            float(r["score"]) if r["score"] is not None else 0.0,
        )
        for r in records
    ]


async def browse(
    conn: asyncpg.Connection | asyncpg.Pool,
    index: IndexRecord,
    where_sql: str,
    params: SqlParams,
    limit: int,
    offset: int,
) -> list[Row]:
    index_param = params.add(index.pk)
    limit_param = params.add(limit)
    offset_param = params.add(offset)
    records = await conn.fetch(
        f"SELECT p.pk, p.product_id, p.doc, NULL::float8 AS score FROM products p "
        f"WHERE p.index_pk = {index_param} AND p.embedding_status = 'ready' AND ({where_sql}) "
        f'ORDER BY p.product_id COLLATE "C" LIMIT {limit_param} OFFSET {offset_param}',
        *params.values,
    )
    return _rows(records)


async def text_search(
    conn: asyncpg.Connection | asyncpg.Pool,
    index: IndexRecord,
    query: str,
    where_sql: str,
    params: SqlParams,
    limit: int,
    offset: int,
) -> list[Row]:
    query_param = params.add(query)
    index_param = params.add(index.pk)
    limit_param = params.add(limit)
    offset_param = params.add(offset)
    records = await conn.fetch(
        f"""
        SELECT p.pk, p.product_id, p.doc, ts_rank_cd(p.search_tsv, q.query) AS score
        FROM products p, websearch_to_tsquery('english', {query_param}) AS q(query)
        WHERE p.index_pk = {index_param} AND p.embedding_status = 'ready' AND p.search_tsv @@ q.query
          AND ({where_sql})
        ORDER BY score DESC, p.product_id COLLATE "C"
        LIMIT {limit_param} OFFSET {offset_param}
        """,
        *params.values,
    )
    return _rows(records)


async def nearest(
    conn: asyncpg.Connection,
    index: IndexRecord,
    embedding: np.ndarray,
    where_sql: str,
    params: SqlParams,
    k: int,
    *,
    filtered: bool,
    ef_search: int = DEFAULT_EF_SEARCH,
    column: VectorColumn = "embedding",
) -> list[Row]:
    """The k products nearest to `embedding` among those matching the filter (caller's transaction).

    `column` is the vector compared: the model embedding, or the local-feature aggregate
    (products without one are skipped). `score` is cosine similarity (1 - cosine
    distance). Must run inside a transaction: the per-query planner settings are `SET LOCAL`.
    """
    exact = await plan_scan(conn, index, where_sql, params, filtered=filtered, ef_search=max(ef_search, k))
    sql, values = nearest_sql(index, embedding, where_sql, params, k, exact=exact, column=column)
    rows = _rows(await conn.fetch(sql, *values))
    if len(rows) < k and filtered and not exact:
        # the walk gave up (max_scan_tuples) on a filter rarer than estimated: scan exactly
        await configure_scan(conn, exact=True, ef_search=max(ef_search, k))
        sql, values = nearest_sql(index, embedding, where_sql, params, k, exact=True, column=column)
        rows = _rows(await conn.fetch(sql, *values))
    return rows


async def estimated_matches(conn: asyncpg.Connection, index: IndexRecord, where_sql: str, params: SqlParams) -> float:
    """The planner's estimate of the products of `index` matching the filter (no execution)."""
    local = SqlParams(list(params.values))
    index_param = local.add(index.pk)
    plan = await conn.fetchval(
        f"EXPLAIN (FORMAT JSON) SELECT 1 FROM products p WHERE p.index_pk = {index_param} AND ({where_sql})",
        *local.values,
    )
    return float(json.loads(plan)[0]["Plan"]["Plan Rows"])


async def plan_scan(
    conn: asyncpg.Connection,
    index: IndexRecord,
    where_sql: str,
    params: SqlParams,
    *,
    filtered: bool,
    ef_search: int,
) -> bool:
    """Choose exact scan or HNSW walk and set the planner for it; returns True for exact.

    The planner's estimate of matching products decides (EXPLAIN, no execution: an exact
    count costs what the filter's GIN bitmap costs, 10-12 ms for a 10% filter at 100k
    products, five times the ANN query it would choose). On the HNSW path explicit sorts
    are discouraged so a filter's selectivity estimate cannot trade the graph walk for a
    full scan + sort; on the exact path hash/merge joins are, so the matching rows' vectors
    are probed by key instead of scanning the whole vector table. A wrong estimate costs
    time, never results: an HNSW walk that returns fewer than k rows is redone exactly
    (`nearest`, `nearest_many`).
    """
    exact = filtered and await estimated_matches(conn, index, where_sql, params) <= EXACT_SCAN_MAX_ROWS
    await configure_scan(conn, exact=exact, ef_search=ef_search)
    return exact


async def configure_scan(conn: asyncpg.Connection, *, exact: bool, ef_search: int) -> None:
    """The settings `plan_scan` makes, for a decision taken elsewhere (tests, benchmarks)."""
    await conn.execute(
        "SELECT set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', 'relaxed_order', true),"
        " set_config('hnsw.max_scan_tuples', $2, true), set_config('enable_sort', $3, true),"
        " set_config('enable_hashjoin', $4, true), set_config('enable_mergejoin', $4, true)",
        str(ef_search),
        str(MAX_SCAN_TUPLES),
        "on" if exact else "off",
        "off" if exact else "on",
    )


def nearest_sql(
    index: IndexRecord,
    embedding: np.ndarray,
    where_sql: str,
    params: SqlParams,
    k: int,
    *,
    exact: bool,
    column: VectorColumn = "embedding",
) -> tuple[str, list[Any]]:
    """The nearest-neighbour statement and its values (exposed so tests can EXPLAIN it)."""
    local = SqlParams(list(params.values))
    col, vector_param, present = _compared_vector(local, index, column, embedding)
    index_param = local.add(index.pk)
    k_param = local.add(k)
    table = index.vectors_table
    if exact:
        # `+ 0` makes the ordering expression unindexable: an exact scan over the filtered rows.
        sql = f"""
            SELECT p.pk, p.product_id, p.doc, 1 - ({col} <=> {vector_param}) AS score
            FROM products p JOIN {table} v ON v.product_pk = p.pk
            WHERE {_same_index(index_param)} AND ({where_sql}){present}
            ORDER BY ({col} <=> {vector_param}) + 0, p.pk
            LIMIT {k_param}
        """
    else:
        # relaxed_order may return slightly out of order; the outer query restores it.
        sql = f"""
            WITH candidates AS MATERIALIZED (
                SELECT v.product_pk, {col} <=> {vector_param} AS distance
                FROM {table} v JOIN products p ON p.pk = v.product_pk
                WHERE {_same_index(index_param)} AND ({where_sql}){present}
                ORDER BY {col} <=> {vector_param}
                LIMIT {k_param}
            )
            SELECT p.pk, p.product_id, p.doc, 1 - c.distance AS score
            FROM candidates c JOIN products p ON p.pk = c.product_pk
            ORDER BY c.distance, p.pk
        """
    return sql, local.values


@dataclass(frozen=True)
class VectorQuery:
    vector: np.ndarray
    column: VectorColumn
    k: int


async def nearest_many(
    conn: asyncpg.Connection,
    index: IndexRecord,
    queries: list[VectorQuery],
    where_sql: str,
    params: SqlParams,
    *,
    filtered: bool,
    ef_search: int = DEFAULT_EF_SEARCH,
) -> list[list[tuple[int, float]]]:
    """(product pk, cosine) nearest neighbours per query, under one filter: one scan decision and
    one statement for all of them (reverse search asks ~6 at once). Caller's transaction."""
    if not queries:
        return []
    k_max = max(q.k for q in queries)
    exact = await plan_scan(conn, index, where_sql, params, filtered=filtered, ef_search=max(ef_search, k_max))
    out = await _fetch_many(conn, index, queries, where_sql, params, exact)
    if filtered and not exact and any(len(got) < q.k for got, q in zip(out, queries, strict=True)):
        # a walk gave up on a filter rarer than estimated: scan exactly (see `nearest`)
        await configure_scan(conn, exact=True, ef_search=max(ef_search, k_max))
        out = await _fetch_many(conn, index, queries, where_sql, params, True)
    return out


async def _fetch_many(
    conn: asyncpg.Connection,
    index: IndexRecord,
    queries: list[VectorQuery],
    where_sql: str,
    params: SqlParams,
    exact: bool,
) -> list[list[tuple[int, float]]]:
    sql, values = nearest_many_sql(index, queries, where_sql, params, exact=exact)
    out: list[list[tuple[int, float]]] = [[] for _ in queries]
    for r in await conn.fetch(sql, *values):
        out[r["q"]].append((int(r["pk"]), float(r["score"])))
    return out


def nearest_many_sql(
    index: IndexRecord, queries: list[VectorQuery], where_sql: str, params: SqlParams, *, exact: bool
) -> tuple[str, list[Any]]:
    """UNION ALL of one nearest-neighbour branch per query (each planned on its own)."""
    local = SqlParams(list(params.values))
    index_param = local.add(index.pk)
    table = index.vectors_table
    branches = []
    for number, query in enumerate(queries):
        col, vector_param, present = _compared_vector(local, index, query.column, query.vector)
        k_param = local.add(query.k)
        # exact: `+ 0` makes the ordering unindexable, so the filtered rows are scanned
        order = f"({col} <=> {vector_param}) + 0, p.pk" if exact else f"{col} <=> {vector_param}"
        branches.append(
            f"(SELECT {int(number)} AS q, v.product_pk AS pk, 1 - ({col} <=> {vector_param}) AS score"
            f" FROM {table} v JOIN products p ON p.pk = v.product_pk"
            f" WHERE {_same_index(index_param)} AND ({where_sql}){present}"
            f" ORDER BY {order} LIMIT {k_param})"
        )
    return "\nUNION ALL\n".join(branches), local.values


@dataclass(frozen=True)
class CandidateDetail:
    doc: dict[str, Any]
    features: asyncpg.Record | None  # local_features columns, None when the product has none


async def candidate_details(
    conn: asyncpg.Connection, index: IndexRecord, product_pks: list[int]
) -> dict[int, CandidateDetail]:
    """Document and stored local features of these products of `index`."""
    return {
        r["product_pk"]: CandidateDetail(json.loads(r["doc"]), r if r["algorithm"] is not None else None)
        for r in await conn.fetch(
            "SELECT p.pk AS product_pk, p.product_id, p.doc, f.algorithm, f.keypoint_count, f.keypoints,"
            " f.descriptors, f.image_width, f.image_height"
            " FROM products p LEFT JOIN local_features f ON f.product_pk = p.pk"
            " WHERE p.index_pk = $1 AND p.pk = ANY($2::bigint[])",
            index.pk,
            product_pks,
        )
    }


async def candidate_vectors(
    conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord, product_pks: list[int]
) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """(embedding, local aggregate or None) per product, for scoring candidates found by the other one."""
    rows = await conn.fetch(
        f"SELECT product_pk, embedding::real[] AS e, local_aggregate::real[] AS a "
        f"FROM {index.vectors_table} WHERE product_pk = ANY($1::bigint[])",
        product_pks,
    )
    return {
        r["product_pk"]: (
            np.asarray(r["e"], dtype=np.float32),
            None if r["a"] is None else np.asarray(r["a"], dtype=np.float32),
        )
        for r in rows
    }
