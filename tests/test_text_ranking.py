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
