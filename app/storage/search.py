"""Search SQL: filtered nearest neighbours, one statement with the filter (browse and text: storage.storefront).

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

from app.filters import FilterNode
from app.storage import storefront
from app.storage.filter_sql import compile_filter
from app.storage.indexes import AGGREGATE_CAST, COLOUR_CAST, IndexRecord
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
VectorColumn = Literal["embedding", "local_aggregate", "colour"]
_VECTOR_COLUMNS = ("embedding", "local_aggregate", "colour")
_CASTS = {"local_aggregate": AGGREGATE_CAST, "colour": COLOUR_CAST}


def _where(node: FilterNode | None) -> tuple[str, SqlParams]:
    """The filter as a boolean SQL expression over `products p`, and its bind parameters."""
    params = SqlParams()
    return compile_filter(node, params, "p"), params


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
    cast = index.vector_cast if column == "embedding" else _CASTS[column]
    vector_param = local.add(vector.astype(np.float32), cast)
    col = f"v.{column}"  # one of three fixed names, checked above
    # products without a local aggregate (or colour descriptor) are skipped, not ranked last
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


# One page of the searchable catalog in id order (calibration samples its products from it).
CATALOG_PAGE = """
    SELECT p.pk, p.product_id, p.doc, NULL::float8 AS score
    FROM products p
    WHERE p.index_pk = $1 AND p.embedding_status = 'ready'
    ORDER BY p.product_id COLLATE "C"
    LIMIT $2 OFFSET $3
"""


async def catalog_page(
    conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord, limit: int, offset: int
) -> list[Row]:
    return _rows(await conn.fetch(CATALOG_PAGE, index.pk, limit, offset))


def lexical_leg_ctes(
    params: SqlParams, query: str, index_param: str, where_sql: str | None, k: int, k_param: str
) -> str:
    """The lexical leg of hybrid search: the text query's CTEs (storage.storefront.text_ctes: OR of
    the words, the last a prefix, misspellings corrected) and `lexical` (pk, rank), the `k` best
    products matching the text and the filter by (ts_rank_cd score, product_id).

    Unfiltered, the scores and ids are the postings' (`ranked`, an index-only scan summed per
    product), and only the best of them meet products (storefront.best_first_ctes: the first few
    in (score, id) order probed for their state until `k` are taken). Under a filter, ts_rank_cd
    over the products matching both (the filter's and the text's GIN bitmaps): fewer rows than
    the postings of every match.
    """
    words = storefront.query_words(query)
    ctes = storefront.text_ctes(params, words, index_param, ranked=where_sql is None)
    if where_sql is None:
        ctes += storefront.best_first_ctes("best", params, index_param, k, "r.pk, r.product_id, r.score")
        best = """
                SELECT * FROM best"""
    else:
        best = f"""
                SELECT p.pk, p.product_id,
                       ts_rank_cd('{storefront.RANK_WEIGHTS}', p.search_tsv, (SELECT q FROM tq), 1)::float8 AS score
                FROM products p
                WHERE p.index_pk = {index_param} AND p.embedding_status = 'ready'
                  AND p.search_tsv @@ (SELECT q FROM tq) AND ({where_sql})"""
    lexical = f"""lexical AS MATERIALIZED (
            SELECT l.pk, l.rank FROM (
                SELECT b.pk, row_number() OVER (ORDER BY b.score DESC, b.product_id COLLATE "C") AS rank
                FROM ({best}
                ) b
            ) l
            WHERE l.rank <= {k_param}
        )"""
    return ",\n        ".join([*ctes, lexical])


# Reciprocal rank fusion's constant (Cormack et al. 2009; the value Marqo and most engines use):
# a product's hybrid score is the sum over the legs that found it of 1 / (RRF_K + its rank there).
RRF_K = 60


async def hybrid_search(
    conn: asyncpg.Connection,
    index: IndexRecord,
    query: str,
    embedding: np.ndarray,
    where: FilterNode | None,
    k: int,
    *,
    ef_search: int = DEFAULT_EF_SEARCH,
) -> list[Row]:
    """The k best products by reciprocal rank fusion of the lexical and the vector leg, each leg
    `k` deep under the filter, in one statement (caller's transaction, as `nearest`).

    The vector leg takes the same exact-or-HNSW decision as `nearest`, and is redone exactly
    when an HNSW walk under a filter comes back short, so it always holds `k` products when
    `k` match the filter.
    """
    exact = await plan_scan(conn, index, where, ef_search=max(ef_search, k))
    sql, values = hybrid_sql(index, query, embedding, where, k, exact=exact)
    records = await conn.fetch(sql, *values)
    vector_rows = records[0]["vector_rows"] if records else 0
    if vector_rows < k and where is not None and not exact:
        await configure_scan(conn, exact=True, ef_search=max(ef_search, k))
        sql, values = hybrid_sql(index, query, embedding, where, k, exact=True)
        records = await conn.fetch(sql, *values)
    return _rows(records)


def hybrid_sql(
    index: IndexRecord,
    query: str,
    embedding: np.ndarray,
    where: FilterNode | None,
    k: int,
    *,
    exact: bool,
) -> tuple[str, list[Any]]:
    """The hybrid statement and its values (sql/hybrid_search.sql is its rendered form)."""
    where_sql, local = _where(where)
    col, vector_param, _ = _compared_vector(local, index, "embedding", embedding)
    index_param = local.add(index.pk)
    k_param = local.add(k)
    rrf_param = local.add(RRF_K)
    table = index.vectors_table
    lexical = lexical_leg_ctes(local, query, index_param, None if where is None else where_sql, k, k_param)
    # exact: `+ 0` makes the ordering unindexable, so the filtered rows are scanned (see nearest_sql)
    vector_order = f"({col} <=> {vector_param}) + 0, p.pk" if exact else f"{col} <=> {vector_param}"
    sql = f"""
        WITH {lexical},
        vector AS MATERIALIZED (
            SELECT c.product_pk AS pk, row_number() OVER (ORDER BY c.distance, c.product_pk) AS rank
            FROM (
                SELECT v.product_pk, {col} <=> {vector_param} AS distance
                FROM {table} v JOIN products p ON p.pk = v.product_pk
                WHERE {_same_index(index_param)} AND ({where_sql})
                ORDER BY {vector_order}
                LIMIT {k_param}
            ) c
        ),
        fused AS (
            SELECT legs.pk, sum(1.0 / ({rrf_param}::int + legs.rank)) AS score
            FROM (SELECT pk, rank FROM lexical UNION ALL SELECT pk, rank FROM vector) legs
            GROUP BY legs.pk
        )
        SELECT p.pk, p.product_id, p.doc, f.score::float8 AS score, (SELECT count(*) FROM vector) AS vector_rows
        FROM fused f JOIN products p ON p.pk = f.pk
        ORDER BY f.score DESC, p.product_id COLLATE "C"
        LIMIT {k_param}
    """
    return sql, local.values


async def nearest(
    conn: asyncpg.Connection,
    index: IndexRecord,
    embedding: np.ndarray,
    where: FilterNode | None,
    k: int,
    *,
    ef_search: int = DEFAULT_EF_SEARCH,
    column: VectorColumn = "embedding",
) -> list[Row]:
    """The k products nearest to `embedding` among those matching the filter (caller's transaction).

    `column` is the vector compared: the model embedding, or the local-feature aggregate
    (products without one are skipped). `score` is cosine similarity (1 - cosine
    distance). Must run inside a transaction: the per-query planner settings are `SET LOCAL`.
    """
    exact = await plan_scan(conn, index, where, ef_search=max(ef_search, k))
    sql, values = nearest_sql(index, embedding, where, k, exact=exact, column=column)
    rows = _rows(await conn.fetch(sql, *values))
    if len(rows) < k and where is not None and not exact:
        # the walk gave up (max_scan_tuples) on a filter rarer than estimated: scan exactly
        await configure_scan(conn, exact=True, ef_search=max(ef_search, k))
        sql, values = nearest_sql(index, embedding, where, k, exact=True, column=column)
        rows = _rows(await conn.fetch(sql, *values))
    return rows


async def estimated_matches(conn: asyncpg.Connection, index: IndexRecord, where: FilterNode | None) -> float:
    """The planner's estimate of the products of `index` matching the filter (no execution)."""
    sql, values = estimated_matches_sql(index, where)
    plan = await conn.fetchval(sql, *values)
    return float(json.loads(plan)[0]["Plan"]["Plan Rows"])


def estimated_matches_sql(index: IndexRecord, where: FilterNode | None) -> tuple[str, list[Any]]:
    """The planner's row estimate for the filter, which chooses exact scan or HNSW walk."""
    where_sql, params = _where(where)
    index_param = params.add(index.pk)
    sql = f"EXPLAIN (FORMAT JSON) SELECT 1 FROM products p WHERE p.index_pk = {index_param} AND ({where_sql})"
    return sql, params.values


async def plan_scan(
    conn: asyncpg.Connection,
    index: IndexRecord,
    where: FilterNode | None,
    *,
    ef_search: int,
) -> bool:
    """Choose exact scan or HNSW walk and set the planner for it; returns True for exact.

    The planner's estimate of matching products decides (EXPLAIN, no execution: an exact
    count costs what the filter's GIN bitmap costs, 10-12 ms for a 10% filter at 100k
    products, five times the ANN query it would choose). On the HNSW path explicit sorts
    and materialised join inputs are discouraged so a filter's selectivity estimate cannot
    trade the graph walk for a full scan + sort, nor probing each candidate's product for a
    scan of every matching product; on both paths hash/merge joins are, so rows are probed
    by key instead of scanning a whole table. A wrong estimate costs
    time, never results: an HNSW walk that returns fewer than k rows is redone exactly
    (`nearest`, `nearest_many`).
    """
    exact = where is not None and await estimated_matches(conn, index, where) <= EXACT_SCAN_MAX_ROWS
    await configure_scan(conn, exact=exact, ef_search=ef_search)
    return exact


# Transaction-local planner settings of one nearest-neighbour search ($1 ef_search,
# $2 max_scan_tuples, $3 enable_sort, $4 hash/merge joins).
# Both paths probe by key, never hash or merge: the exact path looks up the matching rows' vectors,
# the HNSW path each walked candidate's product row. On the HNSW path a Materialize of the filtered
# products is refused too: under a 10% filter at 100k products the planner chose a nested loop
# over the walk's candidates against a materialised copy of the 10,000 matching rows (32 ms to
# build, 640k join-filter comparisons: 50-70 ms per query); probing products_pkey instead: 2 ms
# (benchmarks/multimodal_bench.py, README).
CONFIGURE_SCAN = """
SELECT set_config('hnsw.ef_search', $1, true),
       set_config('hnsw.iterative_scan', 'relaxed_order', true),
       set_config('hnsw.max_scan_tuples', $2, true),
       set_config('enable_sort', $3, true),
       set_config('enable_hashjoin', 'off', true),
       set_config('enable_mergejoin', 'off', true),
       set_config('enable_material', $3, true)
"""


def configure_scan_values(*, exact: bool, ef_search: int) -> list[Any]:
    return [str(ef_search), str(MAX_SCAN_TUPLES), "on" if exact else "off"]


async def configure_scan(conn: asyncpg.Connection, *, exact: bool, ef_search: int) -> None:
    """The settings `plan_scan` makes, for a decision taken elsewhere (tests, benchmarks)."""
    await conn.execute(CONFIGURE_SCAN, *configure_scan_values(exact=exact, ef_search=ef_search))


def nearest_sql(
    index: IndexRecord,
    embedding: np.ndarray,
    where: FilterNode | None,
    k: int,
    *,
    exact: bool,
    column: VectorColumn = "embedding",
) -> tuple[str, list[Any]]:
    """The nearest-neighbour statement and its values (exposed so tests can EXPLAIN it)."""
    where_sql, local = _where(where)
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
    where: FilterNode | None,
    *,
    ef_search: int = DEFAULT_EF_SEARCH,
) -> list[list[tuple[int, float]]]:
    """(product pk, cosine) nearest neighbours per query, under one filter: one scan decision and
    one statement for all of them (reverse search asks ~6 at once). Caller's transaction."""
    # a zero vector has no direction: no cosine, so no neighbours (pgvector would answer NaN)
    asked = [i for i, q in enumerate(queries) if has_direction(q.vector)]
    answers: list[list[tuple[int, float]]] = [[] for _ in queries]
    if not asked:
        return answers
    sent = [queries[i] for i in asked]
    k_max = max(q.k for q in sent)
    exact = await plan_scan(conn, index, where, ef_search=max(ef_search, k_max))
    out = await _fetch_many(conn, index, sent, where, exact)
    if where is not None and not exact and any(len(got) < q.k for got, q in zip(out, sent, strict=True)):
        # a walk gave up on a filter rarer than estimated: scan exactly (see `nearest`)
        await configure_scan(conn, exact=True, ef_search=max(ef_search, k_max))
        out = await _fetch_many(conn, index, sent, where, True)
    for i, got in zip(asked, out, strict=True):
        answers[i] = got
    return answers


def has_direction(vector: np.ndarray) -> bool:
    """Whether a query vector can be compared by cosine at all (not all zeros)."""
    return bool(np.any(np.asarray(vector) != 0))


async def _fetch_many(
    conn: asyncpg.Connection,
    index: IndexRecord,
    queries: list[VectorQuery],
    where: FilterNode | None,
    exact: bool,
) -> list[list[tuple[int, float]]]:
    sql, values = nearest_many_sql(index, queries, where, exact=exact)
    out: list[list[tuple[int, float]]] = [[] for _ in queries]
    for r in await conn.fetch(sql, *values):
        out[r["q"]].append((int(r["pk"]), float(r["score"])))
    return out


def nearest_many_sql(
    index: IndexRecord, queries: list[VectorQuery], where: FilterNode | None, *, exact: bool
) -> tuple[str, list[Any]]:
    """UNION ALL of one nearest-neighbour branch per query (each planned on its own)."""
    where_sql, local = _where(where)
    index_param = local.add(index.pk)
    table = index.vectors_table
    branches = []
    for number, query in enumerate(queries):
        col, vector_param, present = _compared_vector(local, index, query.column, query.vector)
        k_param = local.add(query.k)
        # exact: `+ 0` makes the ordering unindexable, so the filtered rows are scanned
        order = f"({col} <=> {vector_param}) + 0, p.pk" if exact else f"{col} <=> {vector_param}"
        branches.append(
            "(\n"
            f"  SELECT {int(number)} AS q, v.product_pk AS pk, 1 - ({col} <=> {vector_param}) AS score\n"
            f"  FROM {table} v JOIN products p ON p.pk = v.product_pk\n"
            f"  WHERE {_same_index(index_param)} AND ({where_sql}){present}\n"
            f"  ORDER BY {order}\n"
            f"  LIMIT {k_param}\n"
            ")"
        )
    return "\nUNION ALL\n".join(branches), local.values


@dataclass(frozen=True)
class CandidateDetail:
    doc: dict[str, Any]
    features: asyncpg.Record | None  # local_features columns, None when the product has none


# Document and stored local features of reverse search's candidates ($1 index pk, $2 product pks).
CANDIDATE_DETAILS = """
SELECT p.pk AS product_pk, p.product_id, p.doc, f.algorithm, f.keypoint_count, f.keypoints,
       f.descriptors, f.image_width, f.image_height
FROM products p LEFT JOIN local_features f ON f.product_pk = p.pk
WHERE p.index_pk = $1 AND p.pk = ANY($2::bigint[])
"""


async def candidate_details(
    conn: asyncpg.Connection, index: IndexRecord, product_pks: list[int]
) -> dict[int, CandidateDetail]:
    """Document and stored local features of these products of `index`."""
    return {
        r["product_pk"]: CandidateDetail(json.loads(r["doc"]), r if r["algorithm"] is not None else None)
        for r in await conn.fetch(CANDIDATE_DETAILS, index.pk, product_pks)
    }


@dataclass(frozen=True)
class Cosines:
    """A candidate's best cosine over a set of query vectors, per signal (None: none stored or asked)."""

    embedding: float | None
    aggregate: float | None
    colour: float | None


def candidate_cosines_sql(
    index: IndexRecord, product_pks: list[int], queries: dict[VectorColumn, np.ndarray]
) -> tuple[str, list[Any]]:
    """Best cosine per signal of candidates found by another signal ($1 product pks), computed where
    the vectors are: three numbers per candidate instead of its ~1,000 stored floats."""
    local = SqlParams([product_pks])
    columns = []
    for column, name in (("embedding", "g"), ("local_aggregate", "a"), ("colour", "c")):
        vectors = queries.get(column)  # type: ignore[call-overload]
        directed = [v for v in (vectors if vectors is not None else []) if has_direction(v)]
        if not directed:
            columns.append(f"NULL::float8 AS {name}")
            continue
        terms = []
        for vector in directed:
            col, vector_param, _ = _compared_vector(local, index, column, np.asarray(vector))  # type: ignore[arg-type]
            terms.append(f"1 - ({col} <=> {vector_param})")
        # GREATEST ignores NULLs: a product without this vector gets NULL
        columns.append(f"GREATEST({', '.join(terms)}) AS {name}")
    listed = ",\n               ".join(columns)
    sql = f"""
        SELECT v.product_pk,
               {listed}
        FROM {index.vectors_table} v
        WHERE v.product_pk = ANY($1::bigint[])
    """
    return sql, local.values


async def candidate_cosines(
    conn: asyncpg.Connection | asyncpg.Pool,
    index: IndexRecord,
    product_pks: list[int],
    queries: dict[VectorColumn, np.ndarray],
) -> dict[int, Cosines]:
    """Each candidate's best cosine to these query vectors, per signal (`candidate_cosines_sql`)."""
    if not product_pks:
        return {}
    sql, args = candidate_cosines_sql(index, product_pks, queries)
    rows = await conn.fetch(sql, *args)
    return {
        r["product_pk"]: Cosines(_float_or_none(r["g"]), _float_or_none(r["a"]), _float_or_none(r["c"])) for r in rows
    }


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


async def stored_embeddings(
    conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord, product_ids: list[str]
) -> dict[str, np.ndarray]:
    """The stored model embedding of each of these products of `index` that has one, by product id."""
    rows = await conn.fetch(stored_embeddings_sql(index), index.pk, product_ids)
    return {r["product_id"]: np.asarray(r["e"], dtype=np.float32) for r in rows}


def stored_embeddings_sql(index: IndexRecord) -> str:
    """Embeddings of products by id ($1 index pk, $2 product ids): recommendations' query vectors."""
    return f"""
        SELECT p.product_id, v.embedding::real[] AS e
        FROM products p JOIN {index.vectors_table} v ON v.product_pk = p.pk
        WHERE p.index_pk = $1 AND p.product_id = ANY($2::text[])
    """
