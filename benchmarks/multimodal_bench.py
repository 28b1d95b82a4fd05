"""Multimodal benchmark: text query stages for CLIP- and SigLIP-sized text towers, and the hybrid
search statement at catalog scale.

    python -m benchmarks.multimodal_bench                      # both parts, 100k products
    python -m benchmarks.multimodal_bench --part text --queries 40
    python -m benchmarks.multimodal_bench --part sql --products 100000

1. text: per model (random ViT-B-32 with open_clip's bundled tokenizer; random ViT-B-16-SigLIP,
   the architecture of Marqo-Ecommerce-B, with a small stand-in Hugging Face tokenizer),
   single-query milliseconds of each stage for distinct query strings: tokenize, text tower,
   the Embedder's whole `embed` stage (thread hops and batching included, what Server-Timing
   reports as `embed`), and a repeated (cached) query; the image tower's single-image time
   beside them.
2. sql: N products with 512-d clustered vectors and generated titles/descriptions bulk-loaded
   through SQL (COPY, then one UPDATE for the text), HNSW built once, ANALYZEd; then
   `storage.search.hybrid_search` (scan decision + the one fused statement, in one read-only
   transaction) for distinct text+vector queries at several filter selectivities, p50/p95 ms,
   and the EXPLAIN of the statement (which indexes each leg uses).

Random weights: the figures are speed only; they say nothing about relevance. Writes
bench-results/multimodal.json. Prints the machine's load average beside the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WORDS = (
    "red blue green black white grey navy pink brown beige leather cotton wool linen denim canvas suede silk "
    "boot shoe sneaker sandal shirt dress jacket coat hat scarf bag backpack wallet belt watch lamp chair table "
    "mug bottle kettle pan knife towel pillow blanket rug vase clock mirror candle basket jar plate bowl "
    "running hiking casual formal vintage classic slim relaxed waterproof wireless portable compact deluxe "
    "mini large small organic recycled handmade premium soft light heavy warm cool summer winter outdoor kids"
).split()
TEXT_QUERIES = [
    "red leather boot",
    "wireless headphones",
    "blue cotton shirt",
    "waterproof hiking jacket",
    "vintage lamp",
    "organic cotton towel",
    "black running shoe",
    "linen summer dress",
    "handmade ceramic mug",
    "silk scarf",
    "portable speaker",
    "wool winter coat",
    "kids backpack",
    "canvas sneaker",
    "slim leather wallet",
    "classic watch",
    "outdoor chair",
    "soft pillow",
    "recycled glass vase",
    "compact kettle",
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(_percentile(values, 0.5), 2), "p95_ms": round(_percentile(values, 0.95), 2)}


def _queries(n: int) -> list[str]:
    """Shopper-like queries for the text towers (any words)."""
    rng = np.random.default_rng(3)
    out = list(TEXT_QUERIES)
    while len(out) < n:
        out.append(" ".join(rng.choice(WORDS, size=int(rng.integers(2, 5)))))
    return out[:n]


def _catalog_queries(n: int) -> list[str]:
    """Queries of one or two catalog words: the lexical leg matches 0.5-8% of the products."""
    rng = np.random.default_rng(4)
    return [" ".join(rng.choice(WORDS, size=1 + i % 2, replace=False)) for i in range(n)]


async def _text_stages(name: str, spec_json: dict[str, Any], weights: Path | None, n: int) -> dict[str, Any]:
    from PIL import Image

    from app.config import Settings
    from app.vision.embedder import Embedder
    from app.vision.model import ModelRegistry, ModelSpec

    spec = ModelSpec.parse(spec_json)
    registry = ModelRegistry(weights, allow_download=False)
    started = time.perf_counter()
    model = registry.get(spec)
    load_s = time.perf_counter() - started
    queries = _queries(n)
    model.embed_texts(["warm up"])  # type: ignore[attr-defined]
    tokenize, tower = [], []
    for q in queries:
        t0 = time.perf_counter()
        tokens = model.tokenize([q])  # type: ignore[attr-defined]
        t1 = time.perf_counter()
        model.embed_tokens(tokens)  # type: ignore[attr-defined]
        t2 = time.perf_counter()
        tokenize.append((t1 - t0) * 1000)
        tower.append((t2 - t1) * 1000)
    embedder = Embedder(registry, Settings())
    try:
        await embedder.embed_texts(spec, ["warm up the batcher"])
        stage, cached = [], []
        for q in queries:
            t0 = time.perf_counter()
            await embedder.embed_texts(spec, [f"{q} "])  # distinct from the loop above: not cached
            stage.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            await embedder.embed_texts(spec, [f"{q} "])
            cached.append((time.perf_counter() - t0) * 1000)
    finally:
        await embedder.aclose()
    image = Image.new("RGB", (256, 256), (120, 30, 200))
    model.embed([image])
    image_ms = []
    for _ in range(10):
        t0 = time.perf_counter()
        model.embed([image])
        image_ms.append((time.perf_counter() - t0) * 1000)
    context_length = int(model.tokenize(["x"]).shape[1])  # type: ignore[attr-defined]
    params = sum(p.numel() for p in model.module.text.parameters()) if hasattr(model.module, "text") else None
    if params is None:  # CLIP keeps its text tower's modules at the top level
        params = sum(p.numel() for n_, p in model.module.named_parameters() if not n_.startswith("visual."))
    return {
        "model": name,
        "setting": spec_json,
        "dim": model.dim,
        "context_length": context_length,
        "text_tower_params_m": round(params / 1e6, 1),
        "load_s": round(load_s, 2),
        "queries": len(queries),
        "tokenize": _summary(tokenize),
        "text_tower": _summary(tower),
        "embed_stage": _summary(stage),
        "embed_stage_cached": _summary(cached),
        "image_tower_single": _summary(image_ms),
    }


def _siglip_weights(tmp: Path) -> Path:
    """A weights folder holding only the stand-in tokenizer SigLIP's config names (random weights)."""
    from tests.helpers import tokenizer_files

    tokenizer_files(tmp / "timm--ViT-B-16-SigLIP")
    return tmp


async def run_text(n: int) -> list[dict[str, Any]]:
    from app.vision.openclip import OFFLINE_OPEN_CLIP_MODEL

    with tempfile.TemporaryDirectory() as tmp:
        siglip = {"library": "open_clip", "name": "ViT-B-16-SigLIP", "pretrained": False, "seed": 0}
        return [
            await _text_stages("ViT-B-32 (CLIP)", OFFLINE_OPEN_CLIP_MODEL, None, n),
            await _text_stages("ViT-B-16-SigLIP (Marqo-B's architecture)", siglip, _siglip_weights(Path(tmp)), n),
        ]


# --------------------------------------------------------------------- hybrid SQL


async def _load_text(pool: Any, index_pk: int) -> float:
    """Titles and descriptions from WORDS for every product (one UPDATE; the tsvector follows)."""
    started = time.perf_counter()
    words = WORDS
    await pool.execute(
        """
        UPDATE products p SET
          product_title = initcap(w[1 + (pk * 7) % n] || ' ' || w[1 + (pk * 13 + 5) % n]
            || ' ' || w[1 + (pk * 31 + 11) % n]),
          description = w[1 + (pk * 17 + 3) % n] || ' ' || w[1 + (pk * 23 + 7) % n] || ' ' || w[1 + (pk * 41 + 1) % n]
            || ' ' || w[1 + (pk * 53 + 2) % n] || ' ' || w[1 + (pk * 59 + 9) % n]
        FROM (SELECT $2::text[] AS w, cardinality($2::text[]) AS n) words
        WHERE p.index_pk = $1
        """,
        index_pk,
        words,
    )
    await pool.execute("VACUUM ANALYZE products")
    # the text postings' index-only scans need the visibility map (autovacuum's job in service)
    await pool.execute("VACUUM ANALYZE search_postings")
    return time.perf_counter() - started


async def run_sql(products: int, queries: int, data_dir: Path | None) -> dict[str, Any]:
    from app.domain.storefront import build_plan, query_words
    from app.filters import parse_filter
    from app.storage import db, search, storefront

    def lexical_plan(where: Any) -> storefront.StorefrontPlan:
        """LEXICAL's plan: the filter, the first 10 hits, no facets."""
        return build_plan(filter_node=where, facets=None, sort=None, collapse=None, limit=10, offset=0)

    from benchmarks import synthetic

    directory = data_dir or Path(tempfile.mkdtemp(prefix="lookalike-mm-"))
    url = await synthetic.database(directory)
    pool = await db.create_pool(url, min_size=1, max_size=2, statement_timeout_ms=600_000)
    dim = 512
    try:
        vectors = synthetic.clustered_vectors(products, dim, seed=1)
        record, timings = await synthetic.load_index(pool, "mm-hybrid", vectors)
        timings["load_text_s"] = await _load_text(pool, record.pk)
        rng = np.random.default_rng(2)
        picks = rng.integers(0, products, queries)
        qvecs = vectors[picks] + 0.05 * rng.normal(size=(queries, dim)).astype(np.float32)
        qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
        texts = _catalog_queries(queries)
        points = []
        for tag in ("sel_100", "sel_10", "sel_1", "sel_0_1"):
            filter_text = None if tag == "sel_100" else f"{tag}:true"
            for _ in range(2):  # warm the buffer cache for this filter
                where = parse_filter(filter_text)
                async with pool.acquire() as conn, conn.transaction(readonly=True):
                    await search.hybrid_search(conn, record, texts[0], qvecs[0], where, 10)
            latencies, returned, vector_only, lexical_only = [], [], [], []
            by_words: dict[int, list[float]] = {1: [], 2: []}
            for text, vector in zip(texts, qvecs, strict=True):
                where = parse_filter(filter_text)
                started = time.perf_counter()
                async with pool.acquire() as conn, conn.transaction(readonly=True):
                    rows = await search.hybrid_search(conn, record, text, vector, where, 10)
                latencies.append((time.perf_counter() - started) * 1000)
                by_words[len(text.split())].append(latencies[-1])
                returned.append(len(rows))
                started = time.perf_counter()  # LEXICAL's statement, the same lexical leg alone
                await storefront.storefront_query(pool, record, lexical_plan(where), "text", words=query_words(text))
                lexical_only.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                async with pool.acquire() as conn, conn.transaction(readonly=True):  # TENSOR's statement
                    await search.nearest(conn, record, vector, where, 10)
                vector_only.append((time.perf_counter() - started) * 1000)
            lexical_hits = [
                await pool.fetchval(
                    "SELECT count(*) FROM products p WHERE p.index_pk = $1 AND"
                    " p.search_tsv @@ websearch_to_tsquery('english', $2)",
                    record.pk,
                    t,
                )
                for t in texts[:10]
            ]
            points.append(
                {
                    "selectivity": tag,
                    "matching_products": int(len(synthetic.matching_rows(products, tag))),
                    "min_returned": min(returned),
                    "lexical_matches_median": int(statistics.median(lexical_hits)),
                    **_summary(latencies),
                    "one_word_queries": _summary(by_words[1]),
                    "two_word_queries": _summary(by_words[2]),
                    "tensor_nearest": _summary(vector_only),
                    "lexical_text_search": _summary(lexical_only),
                }
            )
        where = parse_filter("sel_10:true")
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            exact = await search.plan_scan(conn, record, where, ef_search=100)
            sql, values = search.hybrid_sql(record, texts[0], qvecs[0], where, 10, exact=exact)
            plan = [r[0] for r in await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}", *values)]
        # the query vector's literal makes the plan unreadable
        plan = [line if len(line) < 300 else line[:120] + " ... " + line[-40:] for line in plan]
        return {
            "products": products,
            "dim": dim,
            "queries_per_point": queries,
            "k": 10,
            "load": {k: round(v, 2) for k, v in timings.items()},
            "points": points,
            "explain_sel_10": plan,
        }
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("text", "sql", "all"), default="all")
    parser.add_argument("--queries", type=int, default=40, help="distinct queries per measurement")
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--data-dir", type=Path, default=None, help="embedded PostgreSQL data dir (default: temp)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/multimodal.json"))
    args = parser.parse_args()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    result: dict[str, Any] = {
        **previous,
        "benchmark": "multimodal",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "random weights: speed only, nothing about relevance",
    }
    if args.part in ("text", "all"):
        load = os.getloadavg()
        result["text"] = {"loadavg_before": [round(x, 2) for x in load], "models": asyncio.run(run_text(args.queries))}
        result["text"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        for m in result["text"]["models"]:
            print(
                f"{m['model']}: tokenize p50 {m['tokenize']['p50_ms']} ms, text tower {m['text_tower']['p50_ms']} ms, "
                f"embed stage {m['embed_stage']['p50_ms']} ms (cached {m['embed_stage_cached']['p50_ms']} ms), "
                f"image tower {m['image_tower_single']['p50_ms']} ms"
            )
    if args.part in ("sql", "all"):
        load = os.getloadavg()
        result["hybrid_sql"] = asyncio.run(run_sql(args.products, args.queries, args.data_dir))
        result["hybrid_sql"]["loadavg_before"] = [round(x, 2) for x in load]
        result["hybrid_sql"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        for p in result["hybrid_sql"]["points"]:
            print(
                f"hybrid SQL {p['selectivity']}: p50 {p['p50_ms']} ms (1 word {p['one_word_queries']['p50_ms']}, "
                f"2 words {p['two_word_queries']['p50_ms']}), p95 {p['p95_ms']} ms, min returned {p['min_returned']}; "
                f"TENSOR {p['tensor_nearest']['p50_ms']} ms, LEXICAL {p['lexical_text_search']['p50_ms']} ms"
            )
    print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
