"""Filter DSL benchmark: parse+compile cost per filter, and filtered query latency at catalog scale.

    .venv/bin/python -m benchmarks.filter_bench [--products 100000] [--runs 300]

1. Compile: `compile_filter(parse_filter(text))` for every example of FILTER_DSL.md and
   some long filters (a 200-term OR chain, a 1000-item IN list, 32 nested groups, a
   filter at the 10,000-character limit); microseconds per call, best of 5 autoranged
   repeats (the least disturbed figure on a shared machine).
2. Query: one lookalike index of N generated products (brands 0.1% each, uniform prices,
   booleans, a custom numeric field) in the embedded PostgreSQL (`.data/bench-pg`,
   database `filter_bench`), migrated to head and ANALYZEd; each filter runs `--runs`
   times after a warm-up, as the service would (asyncpg prepares the statement), once
   with PostgreSQL's default plan cache (generic plan possible after 5 runs) and once
   with plan_cache_mode=force_custom_plan. p50/p95/mean/min milliseconds, rows
   returned, and the top of the custom and the generic plan.

Prints a table and writes bench-results/filter_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from app.filters import index_terms, parse_filter
from app.storage import db, migrate
from app.storage.filter_sql import compile_filter
from app.storage.params import SqlParams

OUT = Path("bench-results/filter_bench.json")
INDEX_NAME = "filter-bench"

# The examples table of FILTER_DSL.md (valid rows).
DSL_EXAMPLES = [
    "brand:Nike AND price:[* TO 200]",
    "color:(Light Blue) OR color:White",
    "productCollections:shoes AND productCollections:outdoor",
    "NOT productCollections:shoes",
    "brand:Sony OR brand:Gucci AND price:[* TO 100]",
    "(brand:Sony OR brand:Gucci) AND price:[200 TO *]",
    "brand IN (Sony, (Acme Co))",
    "NOT brand IN (Nike, Sony)",
    "inStock:TRUE",
    "_id IN (p1, p3)",
    "price:[1e2 TO 1.5e2]",
]


def _nested(depth: int) -> str:
    text = "a:0"
    for i in range(1, depth + 1):
        text = f"a:{i} {'AND' if i % 2 else 'OR'} ({text})"
    return text


def _at_length_limit() -> str:
    parts: list[str] = []
    i = 0
    while True:
        part = f"field{i % 50}:(value number {i})" if i % 3 else rf"sku\ {i}:x\:{i}"
        candidate = " AND ".join([*parts, part])
        if len(candidate) > 10_000:
            return " AND ".join(parts)
        parts.append(part)
        i += 1


LONG_FILTERS = {
    "or_chain_200_terms": " OR ".join(f"brand:Brand-{i}" for i in range(200)),
    "in_list_1000_items": "brand IN (" + ", ".join(f"b{i}" for i in range(1000)) + ")",
    "nested_32_groups": _nested(32),
    "length_limit_10000_chars": _at_length_limit(),
}


def bench_compile() -> list[dict[str, Any]]:
    results = []
    cases = [(text, text) for text in DSL_EXAMPLES] + list(LONG_FILTERS.items())
    for name, text in cases:

        def run(text: str = text) -> None:
            compile_filter(parse_filter(text), SqlParams())

        timer = timeit.Timer(run)
        number, _ = timer.autorange()
        best = min(timer.repeat(repeat=5, number=number)) / number
        params = SqlParams()
        sql = compile_filter(parse_filter(text), params)
        results.append(
            {
                "filter": name,
                "chars": len(text),
                "parse_compile_us": round(best * 1e6, 2),
                "sql_chars": len(sql),
                "bind_params": len(params.values),
            }
        )
    return results


# --------------------------------------------------------------------- queries


def _docs(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "_id": f"id-{i}",
            "productTitle": f"Product {i}",
            "price": round(rng.uniform(0, 1000), 2),
            "brand": f"Brand-{i % 1000}",  # each brand: 0.1% of the catalog
            "productCollections": [f"c{i % 10}", f"d{i % 7}"],
            "inStock": i % 4 != 0,
            "rating": round(rng.uniform(0, 5), 3),
        }
        for i in range(n)
    ]


QUERIES: list[tuple[str, str, str]] = [
    # (name, filter, SQL tail)
    ("brand 0.1%", "brand:Brand-42", ""),
    ("brand IN 3 brands 0.3%", "brand IN (Brand-1, Brand-2, Brand-3)", ""),
    ("price window ~0.1%", "price:[100 TO 101]", ""),
    ("_id", "_id:id-77", ""),
    ("brand AND price", "brand:Brand-42 AND price:[* TO 500]", ""),
    ("(brand OR brand) AND NOT bool", "(brand:Brand-42 OR brand:Brand-43) AND NOT inStock:false", ""),
    ("custom numeric range (unindexed) ~0.2%", "rating:[4.99 TO 5]", ""),
    ("NOT brand, first 10 by _id", "NOT brand:Brand-42", " ORDER BY p.product_id LIMIT 10"),
]


async def _load(conn: asyncpg.Connection, n: int) -> tuple[int, dict[str, float]]:
    await conn.execute("DELETE FROM indexes WHERE name = $1", INDEX_NAME)
    index_pk = await conn.fetchval(
        "INSERT INTO indexes (name, index_id, settings, model, dimensions, vector_type)"
        " VALUES ($1, $2, '{}', '{}', 4, 'halfvec') RETURNING pk",
        INDEX_NAME,
        secrets.token_hex(16),
    )
    docs = _docs(n)
    started = time.perf_counter()
    terms = [index_terms(doc) for doc in docs]
    terms_s = time.perf_counter() - started
    records = [
        (
            index_pk,
            doc["_id"],
            doc["productTitle"],
            float(doc["price"]),
            doc["productCollections"],
            "https://img.test/p.jpg",
            json.dumps(doc),
            doc_terms,
        )
        for doc, doc_terms in zip(docs, terms, strict=True)
    ]
    started = time.perf_counter()
    await conn.copy_records_to_table(
        "products",
        records=records,
        columns=[
            "index_pk",
            "product_id",
            "product_title",
            "price",
            "product_collections",
            "variant_image_url",
            "doc",
            "filter_terms",
        ],
    )
    copy_s = time.perf_counter() - started
    started = time.perf_counter()
    # Steady state, as autovacuum would leave it: statistics, visibility map, no dead rows
    # from an earlier run of this benchmark.
    await conn.execute("VACUUM (ANALYZE) products")
    analyze_s = time.perf_counter() - started
    return index_pk, {
        "index_terms_us_per_product": round(terms_s / n * 1e6, 2),
        "copy_s": round(copy_s, 2),
        "vacuum_analyze_s": round(analyze_s, 2),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(conn: asyncpg.Connection, sql: str, args: list[Any], runs: int) -> tuple[list[float], int]:
    statement = await conn.prepare(sql)
    rows: list[asyncpg.Record] = []
    for _ in range(10):  # warm-up: caches, and past PostgreSQL's 5 custom plans
        rows = await statement.fetch(*args)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        rows = await statement.fetch(*args)
        times.append((time.perf_counter() - started) * 1000)
    return times, len(rows)


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p95_ms": round(_percentile(times, 0.95), 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "min_ms": round(min(times), 3),
    }


async def _generic_plan(conn: asyncpg.Connection, sql: str, args: list[Any]) -> list[str]:
    """The plan PostgreSQL caches for a prepared statement when it goes generic."""
    literals = []
    for value in args:
        if isinstance(value, list):
            literals.append(await conn.fetchval("SELECT quote_literal($1::text[])", value))
        else:
            literals.append(await conn.fetchval("SELECT quote_literal($1::text)", str(value)))
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute("PREPARE bench_generic AS " + sql)
        try:
            rows = await conn.fetch(f"EXPLAIN EXECUTE bench_generic({', '.join(literals)})")
        finally:
            await conn.execute("DEALLOCATE bench_generic")
    return [r[0].strip() for r in rows]


async def bench_queries(url: str, n: int, runs: int) -> dict[str, Any]:
    # Two connections as the service's pool makes them: PostgreSQL's default plan cache
    # (a prepared statement may switch to a generic plan after 5 runs), and
    # force_custom_plan (every run planned with its values, ~0.1 ms of planning).
    conn = await asyncpg.connect(url, server_settings={"jit": "off"})
    custom = await asyncpg.connect(url, server_settings={"jit": "off", "plan_cache_mode": "force_custom_plan"})
    try:
        index_pk, load = await _load(conn, n)
        results = []
        for name, text, tail in QUERIES:
            params = SqlParams([index_pk])
            where = compile_filter(parse_filter(text), params)
            sql = f"SELECT p.product_id FROM products p WHERE p.index_pk = $1 AND {where}{tail}"  # noqa: S608
            custom_plan = [r[0].strip() for r in await conn.fetch("EXPLAIN " + sql, *params.values)]
            generic_plan = await _generic_plan(conn, sql, params.values)
            default_times, rows = await _timed(conn, sql, params.values, runs)
            custom_times, _ = await _timed(custom, sql, params.values, runs)
            results.append(
                {
                    "query": name,
                    "filter": text,
                    "rows": rows,
                    "default_plan_cache": _summary(default_times),
                    "force_custom_plan": _summary(custom_times),
                    "custom_plan": custom_plan[:4],
                    "generic_plan": generic_plan[:4],
                    "seq_scan": any("Seq Scan" in line for line in custom_plan + generic_plan),
                }
            )
        server_version = await conn.fetchval("SHOW server_version")
        await conn.execute("DELETE FROM indexes WHERE pk = $1", index_pk)
        return {"load": load, "queries": results, "server_version": server_version}
    finally:
        await custom.close()
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    compile_results = bench_compile()
    print(f"{'parse+compile':<58} {'chars':>6} {'us':>9} {'params':>6}")
    for r in compile_results:
        print(f"{r['filter'][:58]:<58} {r['chars']:>6} {r['parse_compile_us']:>9.1f} {r['bind_params']:>6}")

    server = db.start_embedded_postgres(Path(".data/bench-pg"))
    url = urlsplit(server)._replace(path="/filter_bench").geturl()  # the URL may carry ?host=
    asyncio.run(db.ensure_database(url))
    migrate.upgrade(url)
    query_results = asyncio.run(bench_queries(url, args.products, args.runs))
    print(f"\n{args.products} products, {args.runs} runs each (PostgreSQL {query_results['server_version']})")
    print(f"load: {query_results['load']}")
    print(f"{'query':<40} {'rows':>5} {'p50 ms':>8} {'p95 ms':>8} {'min ms':>8} | custom: {'p50':>7} {'p95':>7}")
    for r in query_results["queries"]:
        d, c = r["default_plan_cache"], r["force_custom_plan"]
        print(
            f"{r['query']:<40} {r['rows']:>5} {d['p50_ms']:>8.3f} {d['p95_ms']:>8.3f} {d['min_ms']:>8.3f} |"
            f"         {c['p50_ms']:>7.3f} {c['p95_ms']:>7.3f}"
        )
        print(f"{'':<8}custom plan:  {r['custom_plan'][0][:90]}")
        print(f"{'':<8}generic plan: {r['generic_plan'][0][:90]}")

    report = {
        "benchmark": "filter_bench",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "products": args.products,
        "runs": args.runs,
        "compile": compile_results,
        **query_results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
