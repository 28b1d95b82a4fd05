"""Storefront queries at catalog scale: browse with a 10% filter + 3 facets + sortBy + collapse,
and text queries with the same facets, through the service's own statement builder.

    python -m benchmarks.storefront_bench                 # 100,000 products
    python -m benchmarks.storefront_bench --products 20000 --runs 20

The catalog is bulk-loaded with COPY (text_bench's titles, plus brand (50), colour,
collections, price and parentProductId: about 3 variants per parent). Each query runs
`--runs` times after a warm-up; the figure is the wall time of
`storage.storefront.storefront_query` (one statement, one round trip), and for an unfiltered
text query with facets also as the service answers it (`apart`, `service_p50_ms`: the hits' and
the facets' statements at once on two connections, `storage.storefront.facets_apart`). Each run also times the
same statement reading the wide `products` rows instead of `product_facets` (migration 0009),
and, where the statement reads `product_text` (migration 0011: no filter), reading
`product_facets` instead, interleaved on the same database (`wide_rows`, `facets_rows`; the
answers are checked equal). After the load
the tables are VACUUMed and ANALYZEd, as autovacuum would in service. Writes
bench-results/storefront.json with p50/p95 per query and both EXPLAIN (ANALYZE, BUFFERS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from app.contract.storefront import CollapseField, Facets, SortBy
from app.domain.storefront import build_plan, query_words
from app.filters import parse_filter
from app.storage import db, indexes
from app.storage.indexes import IndexRecord
from app.storage.storefront import (
    Source,
    StorefrontResult,
    facets_apart,
    storefront_query,
    storefront_query_apart,
    storefront_sql,
)
from benchmarks import synthetic, text_bench
from benchmarks.bulk import copy_products

FACETS = {
    "fields": {
        "brand": {"type": "string", "maxResults": 10},
        "productCollections": {"type": "array"},
        "price": {"type": "number", "ranges": [{"to": 50}, {"from": 50, "to": 200}, {"from": 200}]},
    }
}
SORT = {"fields": [{"fieldName": "price", "order": "desc"}]}
COLLAPSE = {"name": "parentProductId"}
COLLECTIONS = ["shoes", "sale", "outdoor", "kids", "new", "gifts", "home", "audio", "travel", "office"]


def catalog(n: int, seed: int = 13) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = text_bench.catalog(n, seed=seed)
    for i, doc in enumerate(docs):
        doc["brand"] = f"Brand{rng.randrange(50):02d}"
        doc["colour"] = rng.choice(text_bench.COLOURS)
        doc["productCollections"] = rng.sample(COLLECTIONS, rng.randrange(1, 4))
        doc["parentProductId"] = f"parent{i // 3}"
        doc["sel_10"] = i % 10 == 0  # the 10% filter
    return docs


async def load(conn: asyncpg.Connection, docs: list[dict[str, Any]], name: str = "storefront-bench") -> IndexRecord:
    async with conn.transaction():
        existing = await indexes.get_index(conn, name)
        if existing is not None:
            await indexes.delete_index(conn, existing)
        record = await indexes.create_index(
            conn,
            name=name,
            index_id=secrets.token_hex(16),
            settings={},
            model={},
            dimensions=4,
            vector_type="halfvec",
        )
    await copy_products(conn, record.pk, docs)
    await conn.execute("VACUUM (ANALYZE) products")
    await conn.execute("ANALYZE search_words")
    # the text postings' index-only scans need the visibility map (autovacuum's job in service)
    await conn.execute("VACUUM (ANALYZE) search_postings")
    await conn.execute("VACUUM (ANALYZE) product_facets")
    await conn.execute("VACUUM (ANALYZE) product_text")
    return record


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    pool: asyncpg.Pool,
    record: IndexRecord,
    name: str,
    source: Source,
    q: str,
    filter_text: str | None,
    runs: int,
    *,
    collapse: bool,
) -> dict[str, Any]:
    plan = build_plan(
        filter_node=parse_filter(filter_text),
        facets=Facets.parse(FACETS),
        sort=SortBy.parse(SORT),
        collapse=CollapseField.parse(COLLAPSE) if collapse else None,
        limit=20,
        offset=0,
    )
    words = query_words(q)
    # The statement as it reads its matches now (`product_text` without a filter, migration 0011;
    # else `product_facets`, 0009) and as it did (`product_facets`; `products`' wide rows),
    # interleaved run by run on the same database: the answers must be equal, and the ratios hold
    # whatever else the machine is doing.
    ways: dict[str, dict[str, Any]] = {"now": {}, "facets": {"text_table": False}, "wide": {"narrow": False}}
    if "product_text" not in storefront_sql(record, plan, source, words=words)[0]:
        del ways["facets"]  # the same statement as now
    apart = facets_apart(plan, source)

    async def answer(way: str) -> StorefrontResult:
        if way != "apart":
            return await storefront_query(pool, record, plan, source, words=words, **ways[way])
        # as the service answers it: hits and facet counts at once, on two of the pool's connections
        assert apart is not None
        return await storefront_query_apart(lambda statement: statement(pool), record, apart, source, words=words)

    timed = [*ways, *(["apart"] if apart is not None else [])]
    results = {}
    for way in timed:
        for _ in range(3):
            results[way] = await answer(way)
    for way in timed:
        assert results[way] == results["now"], f"{name}: {way} and now disagree"
    result = results["now"]
    times: dict[str, list[float]] = {way: [] for way in timed}
    for _ in range(runs):
        for way in timed:
            started = time.perf_counter()
            await answer(way)
            times[way].append((time.perf_counter() - started) * 1000)
    explains = {}
    statements = {way: storefront_sql(record, plan, source, words=words, **options) for way, options in ways.items()}
    if apart is not None:
        statements["apart_hits"] = storefront_sql(record, apart[0], source, words=words)
        statements["apart_facets"] = storefront_sql(record, apart[1], source, words=words, hits=False)
    for way, (sql, values) in statements.items():
        async with pool.acquire() as conn:
            explains[way] = [r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *values)]

    def summary(way: str) -> dict[str, float]:
        return {
            "p50_ms": round(statistics.median(times[way]), 2),
            "p95_ms": round(_percentile(times[way], 0.95), 2),
            "min_ms": round(min(times[way]), 2),
        }

    return {
        "name": name,
        "q": q or "*",
        "filter": filter_text,
        "facets": list(FACETS["fields"]),
        "sortBy": SORT,
        "collapse": COLLAPSE if collapse else None,
        "hits": len(result.rows),
        "facet_brand_total": sum(v["count"] for v in result.facets["brand"].values()),
        "runs": runs,
        **summary("now"),
        "wide_rows": summary("wide"),
        **({"facets_rows": summary("facets")} if "facets" in ways else {}),
        # the service's way (search.SearchService): the hits' and the facets' statements at once
        **({"apart": summary("apart")} if apart is not None else {}),
        "service_p50_ms": summary("now" if apart is None else "apart")["p50_ms"],
        "explain": explains["now"],
        "explain_wide_rows": explains["wide"],
        **({"explain_facets_rows": explains["facets"]} if "facets" in ways else {}),
        **(
            {"explain_apart_hits": explains["apart_hits"], "explain_apart_facets": explains["apart_facets"]}
            if apart is not None
            else {}
        ),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = await synthetic.database(Path(args.data_dir or tempfile.mkdtemp(prefix="lookalike-storefront-")))
    pool = await db.create_pool(url, min_size=1, max_size=2, statement_timeout_ms=600_000)
    try:
        started = time.perf_counter()
        async with pool.acquire() as conn:
            record = await indexes.get_index(conn, "storefront-bench")
            count = (
                0
                if record is None
                else await conn.fetchval("SELECT count(*) FROM products WHERE index_pk = $1", record.pk)
            )
            if not (args.reuse and count == args.products):
                record = await load(conn, catalog(args.products))
        assert record is not None
        load_s = time.perf_counter() - started
        queries = [
            ("browse, 10% filter, 3 facets, sortBy, collapse", "browse", "", "sel_10:true", True),
            ("browse, 10% filter, 3 facets, sortBy", "browse", "", "sel_10:true", False),
            ("text 'leather boots' + 3 facets + sortBy", "text", "leather boots", None, False),
            ("text 'wireles headphnes' (misspelt) + 3 facets + sortBy", "text", "wireles headphnes", None, False),
            ("text 'vintage bo' (prefix) + 3 facets + sortBy + collapse", "text", "vintage bo", None, True),
            ("text 'leather boots' + 10% filter + 3 facets + sortBy", "text", "leather boots", "sel_10:true", False),
        ]
        # Load-independent yardsticks, measured in the same run: the bare scans the statements
        # cannot avoid (the 10% filter's rows; one text query's lexical matches), counted only.
        baselines = {}
        async with pool.acquire() as conn:
            for name, sql in (
                (
                    "count(*) under the 10% filter",
                    "SELECT count(*) FROM products p WHERE p.index_pk = $1"
                    " AND p.filter_terms && ARRAY[E'sel_10\\x1fb:true']",
                ),
                (
                    "count(*) of 'leather | boot:*' matches",
                    "SELECT count(*) FROM products p WHERE p.index_pk = $1"
                    " AND p.search_tsv @@ to_tsquery('lookalike_text', 'leather | boot:*')",
                ),
            ):
                for _ in range(3):
                    await conn.fetchval(sql, record.pk)
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    rows = await conn.fetchval(sql, record.pk)
                    times.append((time.perf_counter() - t) * 1000)
                baselines[name] = {"rows": rows, "p50_ms": round(statistics.median(times), 2)}
                print(f"baseline {name}: {rows} rows, p50 {baselines[name]['p50_ms']} ms", flush=True)
        results = []
        for name, source, q, filter_text, collapse in queries:
            results.append(
                await measure(pool, record, name, source, q, filter_text, args.runs, collapse=collapse)  # type: ignore[arg-type]
            )
            wide = results[-1]["wide_rows"]
            facets = results[-1].get("facets_rows")
            apart = results[-1].get("apart")
            print(
                f"{name}: p50 {results[-1]['p50_ms']} ms, p95 {results[-1]['p95_ms']} ms"
                + (f" (product_facets: p50 {facets['p50_ms']} ms, p95 {facets['p95_ms']} ms)" if facets else "")
                + f" (wide rows: p50 {wide['p50_ms']} ms, p95 {wide['p95_ms']} ms)"
                + (f" (apart, as served: p50 {apart['p50_ms']} ms, p95 {apart['p95_ms']} ms)" if apart else ""),
                flush=True,
            )
    finally:
        await pool.close()
    return {
        "benchmark": "storefront",
        "products": args.products,
        "load_s": round(load_s, 1),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],  # noqa: ASYNC240
        "cpus": os.cpu_count(),
        "baselines": baselines,
        "queries": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--reuse", action="store_true", help="keep a catalog of the same size loaded by an earlier run")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "storefront.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
