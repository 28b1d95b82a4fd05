"""Ranked text search on a generated catalog: a labelled query set, recall@1/@10 and latency per category.

    python -m benchmarks.text_bench                    # 20,000 products, 40 queries per category
    python -m benchmarks.text_bench --products 2000 --per-category 20

Categories: exact titles, misspellings (one edit in each word of five or more letters),
prefixes (the last word cut to 2-4 letters), partial word sets (some title words plus a
word no product has), and accents (accented catalog words typed without accents, and
plain words typed with them). Each query has one target product; recall@k is the share of
queries whose target is among the first k hits. Latency is the storefront statement's
wall time (`storage.storefront.storefront_query`, text source, limit 10, no facets) on the
service's own SQL. Writes bench-results/text_search.json.
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
import unicodedata
from pathlib import Path
from typing import Any

import asyncpg

from app.domain.storefront import build_plan, query_words
from app.storage import db, indexes
from app.storage.indexes import IndexRecord
from app.storage.storefront import storefront_query
from benchmarks import synthetic
from benchmarks.bulk import copy_products

CATEGORIES = ("exact", "misspelling", "prefix", "partial", "accents")

ADJECTIVES = [
    "wireless",
    "waterproof",
    "vintage",
    "classic",
    "compact",
    "premium",
    "lightweight",
    "foldable",
    "ergonomic",
    "insulated",
    "organic",
    "portable",
    "slim",
    "rugged",
    "quilted",
    "stretch",
]
MATERIALS = [
    "leather",
    "cotton",
    "wool",
    "bamboo",
    "steel",
    "ceramic",
    "denim",
    "linen",
    "suede",
    "canvas",
    "crème",
    "façade",
    "naïve",
    "soirée",
    "piñata",
    "jalapeño",
    "randonnée",
    "café",
    "über",
    "señorita",
]
NOUNS = [
    "headphones",
    "boots",
    "backpack",
    "jacket",
    "kettle",
    "blender",
    "sneakers",
    "lamp",
    "wallet",
    "umbrella",
    "speaker",
    "notebook",
    "mattress",
    "sunglasses",
    "scarf",
    "keyboard",
    "bottle",
    "tent",
]
COLOURS = ["red", "blue", "black", "white", "green", "grey"]
SYLLABLES = ["zor", "vex", "kal", "mir", "tan", "pol", "dra", "quin", "bel", "sor", "fen", "lux", "nor", "vak"]
UNSEEN = ["frobnicated", "quixotical", "zymurgic", "plinthwise"]


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def catalog(n: int, seed: int = 5) -> list[dict[str, Any]]:
    """Products titled `<brand> <adjective> <material> <noun>`, brands of 4-8 products each."""
    rng = random.Random(seed)
    brands: list[str] = []
    while len(brands) < max(1, n // 6):
        # 2-4 syllables: 14^2 + 14^3 + 14^4 (41,356) names, enough for 6 products each at 240k
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3, 4)))).capitalize()
        if word not in brands:
            brands.append(word)
    docs = []
    for i in range(n):
        brand = brands[i % len(brands)]
        title = f"{brand} {rng.choice(ADJECTIVES)} {rng.choice(MATERIALS)} {rng.choice(NOUNS)}"
        docs.append(
            {
                "_id": f"t{i:06d}",
                "productTitle": title.title() if rng.random() < 0.5 else title,
                "variantTitle": f"{rng.choice(COLOURS)} / size {rng.randrange(1, 12)}",
                "description": f"A {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} for every day.",
                "price": float(rng.randrange(5, 500)),
                "brand": brand,
                "variantImageUrl": f"https://img.example/{i}.jpg",
            }
        )
    return docs


def _typo(word: str, rng: random.Random) -> str:
    """One edit (deletion, substitution, transposition) away from `word`, not at its first letter."""
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("delete", "substitute", "swap"))
    if kind == "delete":
        return word[:i] + word[i + 1 :]
    if kind == "substitute":
        return word[:i] + rng.choice([c for c in "aeiourstnl" if c != word[i]]) + word[i + 1 :]
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def labelled_queries(docs: list[dict[str, Any]], per_category: int, seed: int = 9) -> list[dict[str, str]]:
    """(category, query, target _id) triples; each target is unique by its title's words."""
    rng = random.Random(seed)
    by_title: dict[str, list[str]] = {}
    for doc in docs:
        by_title.setdefault(strip_accents(doc["productTitle"].lower()), []).append(doc["_id"])
    # only products whose title no other product shares (else "the" target is ambiguous)
    unique = [d for d in docs if len(by_title[strip_accents(d["productTitle"].lower())]) == 1]
    out: list[dict[str, str]] = []
    for category in CATEGORIES:
        pool = unique
        if category == "accents":
            pool = [d for d in unique if strip_accents(d["productTitle"]) != d["productTitle"]]
        for doc in rng.sample(pool, min(per_category, len(pool))):
            words = doc["productTitle"].lower().split()
            if category == "exact":
                query = doc["productTitle"]
            elif category == "misspelling":
                query = " ".join(_typo(w, rng) if len(w) >= 5 else w for w in words)
                if query == " ".join(words):  # no word long enough: misspell the longest
                    longest = max(words, key=len)
                    query = " ".join(_typo(w, rng) if w == longest else w for w in words)
            elif category == "prefix":
                last = words[-1]
                query = " ".join(words[:-1] + [last[: rng.randrange(2, min(5, len(last)))]])
            elif category == "partial":
                keep = [words[0]] + rng.sample(words[1:], 2)
                query = " ".join(keep + [rng.choice(UNSEEN)])
            else:
                query = " ".join(strip_accents(w) for w in words)
            out.append({"category": category, "query": query, "target": doc["_id"]})
    return out


async def load(conn: asyncpg.Connection, docs: list[dict[str, Any]], name: str | None = None) -> IndexRecord:
    async with conn.transaction():
        record = await indexes.create_index(
            conn,
            name=name or f"text-{secrets.token_hex(4)}",
            index_id=secrets.token_hex(16),
            settings={},
            model={},
            dimensions=4,
            vector_type="halfvec",
        )
    await copy_products(conn, record.pk, docs)
    await conn.execute("ANALYZE products")
    return record


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def evaluate(
    pool: asyncpg.Pool, record: IndexRecord, queries: list[dict[str, str]]
) -> dict[str, dict[str, float]]:
    """recall@1, recall@10, latency p50/p95 (ms) per category."""
    plan = build_plan(filter_node=None, facets=None, sort=None, collapse=None, limit=10, offset=0)
    per: dict[str, dict[str, list[float]]] = {}
    for item in queries:
        started = time.perf_counter()
        result = await storefront_query(pool, record, plan, "text", words=query_words(item["query"]))
        elapsed = (time.perf_counter() - started) * 1000
        ids = [r.product_id for r in result.rows]
        slot = per.setdefault(item["category"], {"r1": [], "r10": [], "ms": []})
        slot["r1"].append(1.0 if ids[:1] == [item["target"]] else 0.0)
        slot["r10"].append(1.0 if item["target"] in ids else 0.0)
        slot["ms"].append(elapsed)
    return {
        category: {
            "queries": len(v["r1"]),
            "recall_at_1": round(statistics.fmean(v["r1"]), 3),
            "recall_at_10": round(statistics.fmean(v["r10"]), 3),
            "p50_ms": round(_percentile(v["ms"], 0.5), 2),
            "p95_ms": round(_percentile(v["ms"], 0.95), 2),
        }
        for category, v in per.items()
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = await synthetic.database(Path(args.data_dir or tempfile.mkdtemp(prefix="lookalike-text-")))
    pool = await db.create_pool(url, min_size=1, max_size=2, statement_timeout_ms=600_000)
    try:
        docs = catalog(args.products)
        async with pool.acquire() as conn:
            record = await load(conn, docs, "text-bench")
        queries = labelled_queries(docs, args.per_category)
        await evaluate(pool, record, queries[:10])  # warm the caches
        categories = await evaluate(pool, record, queries)
    finally:
        await pool.close()
    return {
        "benchmark": "text_search",
        "products": args.products,
        "queries_per_category": args.per_category,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],  # noqa: ASYNC240
        "cpus": os.cpu_count(),
        "categories": categories,
        "examples": {c: [q["query"] for q in queries if q["category"] == c][:3] for c in CATEGORIES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--per-category", type=int, default=40)
    parser.add_argument("--data-dir", default=None, help="embedded PostgreSQL directory (default: a temp dir)")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_search.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result["categories"], indent=2))


if __name__ == "__main__":
    main()
