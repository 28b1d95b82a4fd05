"""ANN benchmark: recall@10 against exact search vs SQL latency, per filter selectivity and ef_search;
HNSW build time and size for m / ef_construction; halfvec vs vector.

    python -m benchmarks.ann_bench --quick          # 20k products, a few minutes on 2 cores
    python -m benchmarks.ann_bench                  # 100k products, the published table

Synthetic clustered 384-d vectors (the default model's size). Latency is the SQL alone
(the service's own `storage.search.nearest`: filter count + one ANN statement, in one
read-only transaction), measured from Python over a unix socket. Writes
bench-results/ann.json and bench-results/ann.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.filters import parse_filter
from app.storage import db, search
from benchmarks import synthetic

K = 10


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _measure(pool, record, vectors: np.ndarray, queries: np.ndarray, tag: str, ef: int) -> dict[str, Any]:
    filter_text = None if tag == "sel_100" else f"{tag}:true"
    rows = synthetic.matching_rows(len(vectors), tag)
    latencies: list[float] = []
    recalls: list[float] = []
    returned: list[int] = []
    for query in queries:
        where = parse_filter(filter_text)
        started = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            got = await search.nearest(conn, record, query, where, K, ef_search=ef)
        latencies.append((time.perf_counter() - started) * 1000)
        truth = set(synthetic.exact_top_k(vectors, rows, query, K))
        ids = [r.product_id for r in got]
        returned.append(len(ids))
        recalls.append(len(truth.intersection(ids)) / min(K, len(rows)))
    return {
        "selectivity": tag,
        "matching_products": int(len(rows)),
        "ef_search": ef,
        "recall_at_10": round(statistics.fmean(recalls), 4),
        "min_returned": min(returned),
        "p50_ms": round(_percentile(latencies, 0.5), 3),
        "p95_ms": round(_percentile(latencies, 0.95), 3),
    }


def _queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = vectors[rng.integers(0, len(vectors), n)] + 0.02 * rng.normal(size=(n, vectors.shape[1])).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="lookalike-ann-"))
    url = await synthetic.database(data_dir)
    pool = await db.create_pool(url, min_size=1, max_size=2, statement_timeout_ms=600_000)
    vectors = synthetic.clustered_vectors(args.products, args.dim, seed=1)
    queries = _queries(vectors, args.queries, seed=2)
    result: dict[str, Any] = {
        "postgres": {
            name: await pool.fetchval(f"SELECT current_setting('{name}')")
            for name in ("shared_buffers", "maintenance_work_mem", "effective_cache_size")
        },
        "benchmark": "ann",
        "products": args.products,
        "dim": args.dim,
        "queries_per_point": args.queries,
        "machine": {"cpus": os.cpu_count()},
        "note": "SQL-only latency; synthetic clustered vectors",
    }
    try:
        record, timings = await synthetic.load_index(pool, "ann-halfvec", vectors)
        result["load"] = timings
        # Warm the buffer cache so the first configuration is not penalised.
        await _measure(pool, record, vectors, queries[:10], "sel_100", 40)
        result["sweep"] = [
            await _measure(pool, record, vectors, queries, tag, ef) for tag in synthetic.SELECTIVITIES for ef in args.ef
        ]
        builds = []
        for m, efc in [] if args.sweep_only else args.builds:
            build_n = min(args.products, args.build_products)
            _, t = await synthetic.load_index(pool, "ann-build", vectors[:build_n], m=m, ef_construction=efc)
            builds.append({"m": m, "ef_construction": efc, "products": build_n, **t})
        result["builds"] = builds
        comparison = []
        for vector_type in () if args.sweep_only else ("halfvec", "vector"):
            rec, t = await synthetic.load_index(pool, f"ann-{vector_type}-cmp", vectors, vector_type=vector_type)
            point = await _measure(pool, rec, vectors, queries, "sel_100", search.DEFAULT_EF_SEARCH)
            comparison.append({"vector_type": vector_type, **t, **point})
        result["vector_types"] = comparison
    finally:
        await pool.close()
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tag in synthetic.SELECTIVITIES:
        points = [p for p in result["sweep"] if p["selectivity"] == tag]
        ax.plot([p["p50_ms"] for p in points], [p["recall_at_10"] for p in points], marker="o", label=tag)
        for p in points:
            ax.annotate(str(p["ef_search"]), (p["p50_ms"], p["recall_at_10"]), fontsize=7)
    ax.set_xlabel("SQL p50 latency (ms)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title(f"Filtered ANN, {result['products']:,} products, {result['dim']}-d halfvec (labels: ef_search)")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.legend(title="filter matches")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k products, fewer queries and builds")
    parser.add_argument("--products", type=int, default=None)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--data-dir", default=None, help="embedded PostgreSQL data dir (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--postgres-defaults", action="store_true", help="run the embedded server without lookalike's memory tuning"
    )
    parser.add_argument("--sweep-only", action="store_true", help="skip the build and vector-type comparisons")
    parser.add_argument("--tag", default="", help="suffix for the output file names")
    args = parser.parse_args()
    if args.postgres_defaults:
        os.environ["LOOKALIKE_EMBEDDED_PG_TUNING"] = "off"
    args.products = args.products or (20_000 if args.quick else 100_000)
    args.queries = args.queries or (40 if args.quick else 200)
    args.ef = [20, 40, 64, 100] if args.quick else [20, 40, 64, 100, 200]
    args.builds = [(16, 64)] if args.quick else [(8, 32), (16, 64), (16, 128), (32, 64)]
    args.build_products = 20_000 if args.quick else 50_000
    result = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("-quick" if args.quick else "") + args.tag
    (args.out / f"ann{suffix}.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / f"ann{suffix}.png")
    for p in result["sweep"]:
        print(
            f"{p['selectivity']:>9} ef={p['ef_search']:<4} recall@10={p['recall_at_10']:.3f} "
            f"p50={p['p50_ms']:.2f}ms p95={p['p95_ms']:.2f}ms min_returned={p['min_returned']}"
        )
    print(json.dumps({"builds": result["builds"], "vector_types": result["vector_types"]}, indent=1))


if __name__ == "__main__":
    main()
