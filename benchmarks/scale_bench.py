"""Scale: one index of 1,000,000 products (synthetic 384-d halfvec) on one machine.

    python -m benchmarks.scale_bench                 # 1M products (tens of minutes on 2 cores)
    python -m benchmarks.scale_bench --products 100000

Reports load time (COPY), HNSW build time and size, PostgreSQL memory (shared buffers
and backend RSS), and filtered / unfiltered query latency and recall@10 against exact
search, through the service's own `storage.search.nearest`. Writes bench-results/scale.json
and a PNG beside it.
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
import psutil

from app.filters import parse_filter
from app.storage import db, search
from benchmarks import synthetic

K = 10


def _postgres_rss_bytes() -> int:
    total = 0
    for proc in psutil.process_iter(["name", "memory_info"]):
        if proc.info["name"] == "postgres" and proc.info["memory_info"] is not None:
            total += proc.info["memory_info"].rss
    return total


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="lookalike-scale-"))
    url = await synthetic.database(data_dir)
    pool = await db.create_pool(url, min_size=1, max_size=2, statement_timeout_ms=24 * 3600 * 1000)
    started = time.perf_counter()
    vectors = synthetic.clustered_vectors(args.products, 384, seed=3)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "products": args.products,
        "dim": 384,
        "vector_type": "halfvec",
        "machine": {"cpus": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total},
        "generate_vectors_s": round(time.perf_counter() - started, 1),
    }
    try:
        record, timings = await synthetic.load_index(
            pool,
            "scale",
            vectors,
            build_workers=args.build_workers,
            maintenance_work_mem=args.maintenance_work_mem,
            progress=True,
        )
        result["load"] = {k: round(v, 2) for k, v in timings.items()}
        result["postgres_shared_buffers"] = await pool.fetchval("SHOW shared_buffers")
        rng = np.random.default_rng(4)
        picks = vectors[rng.integers(0, len(vectors), args.queries)]
        queries = picks + 0.02 * rng.normal(size=picks.shape).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        result["queries"] = []
        for tag in synthetic.SELECTIVITIES:
            rows = synthetic.matching_rows(len(vectors), tag)
            latencies, recalls = [], []
            filter_text = None if tag == "sel_100" else f"{tag}:true"
            for query in queries:
                where = parse_filter(filter_text)
                t = time.perf_counter()
                async with pool.acquire() as conn, conn.transaction(readonly=True):
                    got = await search.nearest(conn, record, query, where, K)
                latencies.append((time.perf_counter() - t) * 1000)
                truth = set(synthetic.exact_top_k(vectors, rows, query, K))
                recalls.append(len(truth.intersection(r.product_id for r in got)) / min(K, len(rows)))
            latencies.sort()
            result["queries"].append(
                {
                    "selectivity": tag,
                    "matching_products": int(len(rows)),
                    "recall_at_10": round(statistics.fmean(recalls), 4),
                    "p50_ms": round(latencies[len(latencies) // 2], 2),
                    "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
                }
            )
            print(result["queries"][-1], flush=True)
        result["postgres_rss_bytes"] = _postgres_rss_bytes()
        result["client_rss_bytes"] = psutil.Process().memory_info().rss
    finally:
        await pool.close()
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Recall@10 and p50 latency per filter selectivity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["queries"]
    labels = [p["selectivity"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(labels, [p["p50_ms"] for p in points], color="tab:blue", alpha=0.7, label="p50 ms")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_xlabel("filter matches")
    other = ax.twinx()
    other.plot(labels, [p["recall_at_10"] for p in points], "o-", color="tab:orange", label="recall@10")
    other.set_ylim(0, 1.02)
    other.set_ylabel("recall@10 vs exact")
    load = result["load"]
    ax.set_title(
        f"Scale, {result['products']:,} products, 384-d halfvec (HNSW build {load['hnsw_build_s']:.0f} s)",
        fontsize=9,
    )
    handles = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--maintenance-work-mem", default="4GB")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-results") / "scale.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "queries"}, indent=1))


if __name__ == "__main__":
    main()
