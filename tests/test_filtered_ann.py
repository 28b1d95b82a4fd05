"""Filtered nearest neighbours never under-return and match the exact filtered top-k.

20k products with synthetic clustered vectors, filters matching 100% ... 0.01%.
"""

from __future__ import annotations

import json

import asyncpg
import numpy as np
import pytest

from app.filters import index_terms, parse_filter
from app.storage import indexes, search
from app.storage.indexes import IndexRecord
from app.vision.aggregate import AGGREGATE_DIM

N = 20_000
DIM = 48
K = 10
SELECTIVITY = {"all": 1, "s10": 10, "s1": 100, "s01": 1000, "s001": 10000}


def _vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = rng.normal(size=(64, DIM)).astype(np.float32)
    v = centres[rng.integers(0, 64, n)] + 0.35 * rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
async def ann_index(pool: asyncpg.Pool) -> tuple[IndexRecord, np.ndarray]:
    rng = np.random.default_rng(7)
    vectors = _vectors(rng, N)
    async with pool.acquire() as conn, conn.transaction():
        record = await indexes.create_index(
            conn,
            name="ann-20k",
            index_id="ann-20k-id",
            settings={},
            model={},
            dimensions=DIM,
            vector_type="halfvec",
        )
        rows = []
        for i in range(N):
            doc = {
                "_id": f"p{i:05d}",
                "productTitle": f"item {i}",
                "price": float(i % 500),
                "variantImageUrl": "x",
            }
            for tag, every in SELECTIVITY.items():
                doc[tag] = i % every == 0
            rows.append(
                (
                    record.pk,
                    doc["_id"],
                    doc["productTitle"],
                    doc["price"],
                    "x",
                    json.dumps(doc),
                    index_terms(doc),
                )
            )
        await conn.copy_records_to_table(
            "products",
            records=rows,
            columns=[
                "index_pk",
                "product_id",
                "product_title",
                "price",
                "variant_image_url",
                "doc",
                "filter_terms",
            ],
        )
        pks = await conn.fetch("SELECT pk, product_id FROM products WHERE index_pk = $1", record.pk)
        by_id = {r["product_id"]: r["pk"] for r in pks}
        await conn.executemany(
            f"INSERT INTO {record.vectors_table} (product_pk, embedding) VALUES ($1, $2::halfvec({DIM}))",
            [(by_id[f"p{i:05d}"], vectors[i]) for i in range(N)],
        )
    await pool.execute("ANALYZE products")
    await pool.execute(f"ANALYZE {record.vectors_table}")
    return record, vectors


@pytest.mark.parametrize("tag", list(SELECTIVITY))
async def test_full_limit_and_exact_agreement(pool: asyncpg.Pool, ann_index, tag: str) -> None:
    record, vectors = ann_index
    rng = np.random.default_rng(11)
    matching = N // SELECTIVITY[tag]
    expected_count = min(K, matching)
    agree = total = 0
    for _ in range(20):
        query = vectors[rng.integers(0, N)] + 0.05 * rng.normal(size=DIM).astype(np.float32)
        filter_text = None if tag == "all" else f"{tag}:true"
        where = parse_filter(filter_text)
        async with pool.acquire() as conn, conn.transaction():
            got = await search.nearest(conn, record, query, where, K)
            # Ground truth: brute force over the filtered rows (numpy, independent of SQL ordering).
        # Exact ranking at the precision the index stores (halfvec), so rounding ties do not count.
        stored = vectors.astype(np.float16).astype(np.float32)
        q16 = query.astype(np.float16).astype(np.float32)
        mask = np.arange(N) % SELECTIVITY[tag] == 0
        idx = np.flatnonzero(mask)
        sims = (stored[idx] @ q16) / (np.linalg.norm(stored[idx], axis=1) * np.linalg.norm(q16))
        truth = [f"p{i:05d}" for i in idx[np.argsort(-sims, kind="stable")][:K]]
        assert len(got) == expected_count, (tag, len(got))
        assert all(r.doc[tag] is True for r in got) if tag != "all" else True
        ids = [r.product_id for r in got]
        agree += sum(1 for a, b in zip(ids, truth, strict=False) if a == b)
        total += expected_count
    assert agree / total >= 0.95, (tag, agree / total)


def _literal(value: object) -> str:
    if isinstance(value, np.ndarray):
        return "'[" + ",".join(repr(float(x)) for x in value) + "]'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list):
        return "ARRAY[" + ",".join(_literal(v) for v in value) + "]::text[]" if value else "'{}'::text[]"
    if isinstance(value, bool | int | float):
        return repr(value).lower() if isinstance(value, bool) else repr(value)
    raise TypeError(type(value))


async def _plan_of_prepared(conn: asyncpg.Connection, sql: str, values: list, name: str) -> tuple[str, str]:
    """Plans of a server-side prepared statement: the 7th execution's, and the forced generic one."""
    await conn.execute(f"PREPARE {name} AS {sql}")
    # EXPLAIN takes no protocol-level parameters: spell this test's own values as literals.
    args = ", ".join(_literal(v) for v in values)
    plans = []
    for _ in range(7):
        plans.append("\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE {name}({args})")))
    await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    generic = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE {name}({args})"))
    await conn.execute(f"DEALLOCATE {name}")
    return plans[-1], generic


@pytest.mark.parametrize("filter_text", [None, "s10:true", "all:true AND price:[10 TO 400]"])
async def test_hnsw_used_by_generic_plan(pool: asyncpg.Pool, ann_index, filter_text: str | None) -> None:
    """The 6th+ execution of a prepared statement (generic plan) still walks the HNSW index."""
    record, vectors = ann_index
    where = parse_filter(filter_text)
    sql, values = search.nearest_sql(record, vectors[0], where, K, exact=False)
    async with pool.acquire() as conn, conn.transaction():
        await search.configure_scan(conn, exact=False, ef_search=search.DEFAULT_EF_SEARCH)
        seventh, generic = await _plan_of_prepared(conn, sql, values, "ann_probe")
    assert f"{record.vectors_table}_hnsw" in seventh, seventh
    assert f"{record.vectors_table}_hnsw" in generic, generic


@pytest.mark.parametrize("tag", ["all", "s01"])
async def test_batched_queries_equal_single_ones(pool: asyncpg.Pool, ann_index, tag: str) -> None:
    """nearest_many (reverse search's one statement for all crops) returns what nearest returns
    per query, on the HNSW path (all) and the exact path (0.1%)."""
    record, vectors = ann_index
    rng = np.random.default_rng(5)
    queries = [vectors[rng.integers(0, N)] + 0.05 * rng.normal(size=DIM).astype(np.float32) for _ in range(4)]
    ks = (5, 10, 20, 10)
    where = parse_filter(None if tag == "all" else f"{tag}:true")
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        wanted = [search.VectorQuery(q, "embedding", k) for q, k in zip(queries, ks, strict=True)]
        batched = await search.nearest_many(conn, record, wanted, where)
        single = [
            await search.nearest(conn, record, q, where, k)
            for q, k in zip(queries, ks, strict=True)
        ]
    for got, want in zip(batched, single, strict=True):
        assert len(got) == len(want)
        assert {pk for pk, _ in got} == {r.product_pk for r in want}
        by_pk = {r.product_pk: r.score for r in want}
        assert all(abs(score - by_pk[pk]) < 1e-6 for pk, score in got)


async def test_a_walk_that_comes_back_short_is_redone_exactly(
    pool: asyncpg.Pool, ann_index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong estimate sends a rare filter (20 of 20k) down the HNSW path, and a walk capped at
    50 tuples gives up early: the search must still return the exact filtered top-k."""
    record, vectors = ann_index
    monkeypatch.setattr(search, "EXACT_SCAN_MAX_ROWS", 0)
    monkeypatch.setattr(search, "MAX_SCAN_TUPLES", 50)
    where = parse_filter("s01:true")
    query = vectors[123]
    idx = np.flatnonzero(np.arange(N) % SELECTIVITY["s01"] == 0)
    stored = vectors.astype(np.float16).astype(np.float32)
    truth = {f"p{i:05d}" for i in idx[np.argsort(-(stored[idx] @ query))][:K]}
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        got = await search.nearest(conn, record, query, where, K)
        many = await search.nearest_many(
            conn, record, [search.VectorQuery(query, "embedding", K)], where
        )
    assert len(got) == K and len(set(r.product_id for r in got) & truth) >= K - 1
    assert {pk for pk, _ in many[0]} == {r.product_pk for r in got}


async def test_candidate_cosines_are_the_best_cosine_over_the_query_vectors(pool: asyncpg.Pool, ann_index) -> None:
    """Candidates found by another signal are scored in SQL: per signal, the best cosine over the
    query vectors (a zero vector, which has no direction, is left out), None where nothing is stored."""
    record, vectors = ann_index
    rng = np.random.default_rng(11)
    picked = rng.choice(N, 40, replace=False)
    queries = np.stack([vectors[i] + 0.2 * rng.normal(size=DIM).astype(np.float32) for i in picked[:3]])
    with_zero = np.concatenate([queries, np.zeros((1, DIM), np.float32)])
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        pk_of = {
            r["product_id"]: r["pk"]
            for r in await conn.fetch("SELECT pk, product_id FROM products WHERE index_pk = $1", record.pk)
        }
        pks = [pk_of[f"p{i:05d}"] for i in picked]
        aggregate = rng.normal(size=(1, AGGREGATE_DIM)).astype(np.float32)
        got = await search.candidate_cosines(conn, record, pks, {"embedding": with_zero, "local_aggregate": aggregate})
        none_asked = await search.candidate_cosines(conn, record, pks[:3], {"embedding": np.zeros((0, DIM))})
        zero, real = np.zeros(DIM, np.float32), queries[0]
        neighbours = await search.nearest_many(
            conn, record, [search.VectorQuery(zero, "embedding", 5), search.VectorQuery(real, "embedding", 5)], None
        )
    stored = vectors[picked].astype(np.float16).astype(np.float32)  # halfvec, as stored
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    want = (stored @ unit.T).max(axis=1)
    assert set(got) == set(pks)
    for pk, best in zip(pks, want, strict=True):
        assert got[pk].embedding is not None and abs(got[pk].embedding - float(best)) < 2e-3
        assert got[pk].aggregate is None and got[pk].colour is None  # none stored here / none asked
    assert all(c.embedding is None for c in none_asked.values()) and len(none_asked) == 3
    # a zero query vector has no neighbours; the other query's are untouched
    assert neighbours[0] == [] and len(neighbours[1]) == 5
    assert all(np.isfinite(score) for _, score in neighbours[1])
