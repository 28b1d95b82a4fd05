"""Ranked text search on a small generated catalog: the labelled set's recall, partial matches,
misspellings, prefixes, accents, field weights and informative scores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from app.domain.storefront import build_plan, query_words
from app.storage import indexes
from app.storage.indexes import IndexRecord
from app.storage.storefront import storefront_query
from benchmarks import text_bench


@pytest.fixture(scope="module")
async def text_catalog(pool: asyncpg.Pool) -> AsyncIterator[tuple[IndexRecord, list[dict[str, Any]]]]:
    docs = text_bench.catalog(600, seed=3)
    docs += [
        {
            "_id": "w1",
            "productTitle": "Wireless Headphones",
            "price": 99.0,
            "variantImageUrl": "u",
            "description": "Noise cancelling over-ear headphones",
        },
        {"_id": "w2", "productTitle": "Hiking Boots", "variantTitle": "red", "price": 120.0, "variantImageUrl": "u"},
        {"_id": "w3", "productTitle": "Hiking Boots", "variantTitle": "brown", "price": 120.0, "variantImageUrl": "u"},
        {"_id": "w4", "productTitle": "Leather Boots", "variantTitle": "red", "price": 150.0, "variantImageUrl": "u"},
        {"_id": "w5", "productTitle": "Leather Boots", "variantTitle": "black", "price": 150.0, "variantImageUrl": "u"},
        {
            "_id": "w6",
            "productTitle": "Travel Mug",
            "description": "keeps tea hot; fits red boots cupholders",
            "price": 15.0,
            "variantImageUrl": "u",
        },
        {
            "_id": "w7",
            "productTitle": "Red Cap",
            "variantTitle": "boots edition",
            "price": 15.0,
            "variantImageUrl": "u",
        },
        {"_id": "w8", "productTitle": "Hiking Boots", "variantTitle": "red", "price": 99.0, "variantImageUrl": "u"},
    ]
    async with pool.acquire() as conn:
        record = await text_bench.load(conn, docs)
    yield record, docs
    async with pool.acquire() as conn, conn.transaction():
        await indexes.delete_index(conn, record)


async def _search(pool: asyncpg.Pool, record: IndexRecord, q: str, limit: int = 10) -> list[tuple[str, float]]:
    plan = build_plan(filter_node=None, facets=None, sort=None, collapse=None, limit=limit, offset=0)
    result = await storefront_query(pool, record, plan, "text", words=query_words(q))
    return [(r.product_id, r.score or 0.0) for r in result.rows]


async def test_labelled_set_recall(pool: asyncpg.Pool, text_catalog) -> None:
    record, docs = text_catalog
    queries = text_bench.labelled_queries(docs[:600], per_category=20, seed=4)
    report = await text_bench.evaluate(pool, record, queries)
    assert set(report) == set(text_bench.CATEGORIES)
    assert report["misspelling"]["recall_at_10"] >= 0.9, report
    assert report["prefix"]["recall_at_10"] >= 0.9, report
    assert report["exact"]["recall_at_1"] >= 0.9, report
    assert report["accents"]["recall_at_10"] >= 0.9, report
    assert report["partial"]["recall_at_10"] >= 0.9, report


async def test_misspellings_prefixes_and_partial_words(pool: asyncpg.Pool, text_catalog) -> None:
    record, _ = text_catalog
    assert (await _search(pool, record, "wireles headphnes"))[0][0] == "w1"
    hiking = [i for i, _ in await _search(pool, record, "hiking bo")]
    assert set(hiking[:3]) == {"w2", "w3", "w8"}
    # not every word present: the red leather boots first, then the other leather boots and red things
    partial = [i for i, _ in await _search(pool, record, "leather boots red")]
    assert partial[0] == "w4" and "w5" in partial and "w2" in partial


async def test_scores_are_informative(pool: asyncpg.Pool, text_catalog) -> None:
    record, _ = text_catalog
    hits = await _search(pool, record, "red boots", limit=300)
    scores = dict(hits)
    # title above variant title above description
    assert scores["w2"] > scores["w7"] > scores["w6"]
    # equal matches tie, different matches do not
    plain = dict(await _search(pool, record, "hiking boots"))
    assert plain["w2"] == plain["w8"] == plain["w3"]  # the same words at the same places
    assert plain["w2"] > plain["w7"]  # not the title
    values = [s for _, s in hits]
    assert values == sorted(values, reverse=True)
    distinct_docs = {"w2", "w6", "w7"}
    assert len({scores[i] for i in distinct_docs}) == len(distinct_docs)


async def test_accents_fold_both_ways(pool: asyncpg.Pool, text_catalog) -> None:
    record, docs = text_catalog
    accented = next(d for d in docs if "randonnée" in d["productTitle"].lower())
    plain_query = text_bench.strip_accents(accented["productTitle"])
    assert accented["_id"] in [i for i, _ in await _search(pool, record, plain_query)]
    assert (await _search(pool, record, "Wíreless Héadphones"))[0][0] == "w1"


async def test_odd_text_is_only_data(pool: asyncpg.Pool, text_catalog) -> None:
    record, _ = text_catalog
    for q in ["':* & | ! ( ) <->", "a", "日本語 テスト", "boots:*", "\\", "x" * 300, "-- ; DROP TABLE products"]:
        await _search(pool, record, q)  # no error, whatever comes back
    assert await _search(pool, record, "!!!") == []


# --- the postings (migration 0007): kept by every write, equal to ts_rank_cd ---------------------

_POSTINGS_DRIFT = """
SELECT count(*) FROM (
  (SELECT p.pk, l.lexeme, p.product_id, l.weight FROM products p, lookalike_postings(p.search_tsv) l
   WHERE p.index_pk = $1
   EXCEPT ALL SELECT s.product_pk, s.lexeme, s.product_id, s.weight FROM search_postings s WHERE s.index_pk = $1)
  UNION ALL
  (SELECT s.product_pk, s.lexeme, s.product_id, s.weight FROM search_postings s WHERE s.index_pk = $1
   EXCEPT ALL SELECT p.pk, l.lexeme, p.product_id, l.weight FROM products p, lookalike_postings(p.search_tsv) l
   WHERE p.index_pk = $1)
) drift
"""


async def test_postings_follow_every_write(pool: asyncpg.Pool) -> None:
    from app.storage import products

    docs = [
        {
            "_id": f"p{i}",
            "productTitle": f"Leather boot {i}",
            "description": "red suede",
            "price": 1.0,
            "variantImageUrl": "u",
        }
        for i in range(5)
    ]
    async with pool.acquire() as conn:
        record = await text_bench.load(conn, docs)  # COPY: the statement trigger
        try:
            assert await conn.fetchval("SELECT count(*) FROM search_postings WHERE index_pk = $1", record.pk) > 0
            assert await conn.fetchval(_POSTINGS_DRIFT, record.pk) == 0
            async with conn.transaction():  # an upsert that replaces the text, one that inserts
                await conn.execute(
                    "INSERT INTO products (index_pk, product_id, product_title, description, price,"
                    " variant_image_url, doc) VALUES ($1, 'p1', 'Canvas tote', NULL, 1, 'u', '{}'),"
                    " ($1, 'p9', 'Wool hat', 'warm', 1, 'u', '{}')"
                    " ON CONFLICT (index_pk, product_id) DO UPDATE SET product_title = EXCLUDED.product_title,"
                    " description = EXCLUDED.description",
                    record.pk,
                )
            doc = {
                "_id": "p2",
                "productTitle": "Linen shirt",
                "variantTitle": "blue",
                "price": 2.0,
                "variantImageUrl": "u",
            }
            async with conn.transaction():
                assert await products.update_document_only(conn, record, "p2", doc, [])
            await products.delete_documents(conn, record, ["p3"])
            await conn.execute("UPDATE products SET price = 5 WHERE index_pk = $1", record.pk)  # no text change
            assert await conn.fetchval(_POSTINGS_DRIFT, record.pk) == 0
            lexemes = {
                r["lexeme"]
                for r in await conn.fetch(
                    "SELECT s.lexeme FROM search_postings s JOIN products p ON p.pk = s.product_pk"
                    " WHERE p.index_pk = $1 AND p.product_id IN ('p1', 'p2')",
                    record.pk,
                )
            }
            assert lexemes == {"canva", "tote", "linen", "shirt", "blue"}, lexemes
        finally:
            async with conn.transaction():
                await indexes.delete_index(conn, record)
            assert await conn.fetchval("SELECT count(*) FROM search_postings WHERE index_pk = $1", record.pk) == 0


async def _all_matches_by_ts_rank_cd(pool: asyncpg.Pool, record: IndexRecord, q: str) -> list[tuple[str, float]]:
    """Every ready match ranked by ts_rank_cd itself over the statement's own tsquery (`tq`)."""
    from app.storage.params import SqlParams
    from app.storage.storefront import RANK_WEIGHTS, text_ctes

    params = SqlParams()
    index_param = params.add(record.pk)
    ctes = text_ctes(params, query_words(q), index_param, ranked=False)
    rows = await pool.fetch(
        "WITH " + ",\n".join(ctes) + f"\nSELECT p.product_id, ts_rank_cd('{RANK_WEIGHTS}', p.search_tsv,"
        " (SELECT q FROM tq), 1)::float8 AS score FROM products p"
        f" WHERE p.index_pk = {index_param} AND p.embedding_status = 'ready' AND p.search_tsv @@ (SELECT q FROM tq)"
        ' ORDER BY score DESC, p.product_id COLLATE "C"',
        *params.values,
    )
    return [(r["product_id"], r["score"]) for r in rows]


@pytest.mark.parametrize("q", ["boots", "red boots", "hiking bo", "wireles headphnes", "leather boots red"])
async def test_postings_rank_exactly_as_ts_rank_cd(pool: asyncpg.Pool, text_catalog, q: str) -> None:
    record, _ = text_catalog
    expected = await _all_matches_by_ts_rank_cd(pool, record, q)
    assert expected
    for limit, offset in ((10, 0), (7, 3), (300, 0)):
        plan = build_plan(filter_node=None, facets=None, sort=None, collapse=None, limit=limit, offset=offset)
        result = await storefront_query(pool, record, plan, "text", words=query_words(q))
        assert [(r.product_id, r.score) for r in result.rows] == expected[offset : offset + limit], (q, limit)


async def test_best_first_skips_products_not_ready(pool: asyncpg.Pool, text_catalog) -> None:
    record, _ = text_catalog
    plan = build_plan(filter_node=None, facets=None, sort=None, collapse=None, limit=5, offset=0)
    words = query_words("wireless headphones")
    assert (await storefront_query(pool, record, plan, "text", words=words)).rows[0].product_id == "w1"
    pending = "UPDATE products SET embedding_status = $2 WHERE index_pk = $1 AND product_id = 'w1'"
    await pool.execute(pending, record.pk, "pending")
    try:
        result = await storefront_query(pool, record, plan, "text", words=words)
        assert "w1" not in [r.product_id for r in result.rows] and len(result.rows) == 5
    finally:
        await pool.execute(pending, record.pk, "ready")


async def test_best_first_walks_on_when_the_top_is_not_ready(pool: asyncpg.Pool, text_catalog) -> None:
    # more products not ready at the top than the bounded first cut holds (2 x 5 + 32): the
    # statement walks every match in order instead, and still returns the exact next ready ones
    record, _ = text_catalog
    q = "boots"
    top = [pid for pid, _ in await _all_matches_by_ts_rank_cd(pool, record, q)][:50]
    assert len(top) == 50
    status = "UPDATE products SET embedding_status = $3 WHERE index_pk = $1 AND product_id = ANY($2::text[])"
    await pool.execute(status, record.pk, top[:45], "pending")
    try:
        expected = await _all_matches_by_ts_rank_cd(pool, record, q)
        assert expected[0][0] == top[45]
        plan = build_plan(filter_node=None, facets=None, sort=None, collapse=None, limit=5, offset=0)
        result = await storefront_query(pool, record, plan, "text", words=query_words(q))
        assert [(r.product_id, r.score) for r in result.rows] == expected[:5]
    finally:
        await pool.execute(status, record.pk, top[:45], "ready")


async def test_deleting_an_index_lifts_the_statement_timeout_for_its_transaction_only(pool) -> None:
    """A large index's cascading delete outlasts the service's statement timeout; the delete lifts it
    (SET LOCAL), refuses to run outside a transaction (where SET LOCAL would do nothing), and the
    connection's own timeout is back after the commit."""
    async with pool.acquire() as conn:
        shirt = {"_id": "d1", "productTitle": "Linen Shirt", "price": 9.0, "variantImageUrl": "u"}
        record = await text_bench.load(conn, [shirt])
        await conn.execute("SET statement_timeout = '45s'")
        try:
            with pytest.raises(RuntimeError, match="inside a transaction"):
                await indexes.delete_index(conn, record)
            assert await indexes.get_index(conn, record.name) is not None
            async with conn.transaction():
                await indexes.delete_index(conn, record)
                assert await conn.fetchval("SHOW statement_timeout") == "0"
            assert await conn.fetchval("SHOW statement_timeout") == "45s"
            assert await indexes.get_index(conn, record.name) is None
        finally:
            await conn.execute("RESET statement_timeout")
