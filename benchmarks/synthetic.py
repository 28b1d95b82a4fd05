"""Synthetic catalogs for SQL-level benchmarks: clustered unit vectors + products with selectivity tags.

Each product carries boolean tags `sel_100` ... `sel_0_01` true for 100% ... 0.01% of the
catalog, so one loaded index serves every filter selectivity.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from app.filters import index_terms
from app.storage import db, indexes, migrate
from app.storage.indexes import IndexRecord

SELECTIVITIES: dict[str, float] = {
    "sel_100": 1.0,
    "sel_10": 0.1,
    "sel_1": 0.01,
    "sel_0_1": 0.001,
    "sel_0_01": 0.0001,
}


def clustered_vectors(n: int, dim: int, seed: int = 0, clusters: int = 256, latent_dim: int = 32) -> np.ndarray:
    """Unit vectors with the structure of real embeddings: clusters in a low-dimensional
    latent space, lifted to `dim` by a fixed random projection, plus a little noise.

    (Isotropic noise in 384-d is far harder than any real embedding set: every point is
    nearly equidistant from every other, so "nearest" is ill-defined.)
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, latent_dim)).astype(np.float32)
    lift = rng.normal(size=(latent_dim, dim)).astype(np.float32) / np.sqrt(latent_dim)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        latent = centres[rng.integers(0, clusters, stop - start)]
        latent = latent + 0.5 * rng.normal(size=latent.shape).astype(np.float32)
        chunk = latent @ lift + 0.05 * rng.normal(size=(stop - start, dim)).astype(np.float32)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def _tags(i: int) -> dict[str, bool]:
    return {name: (i % round(1 / frac)) == 0 for name, frac in SELECTIVITIES.items()}


def _product_rows(index_pk: int, start: int, stop: int) -> Iterator[tuple[Any, ...]]:
    for i in range(start, stop):
        doc: dict[str, Any] = {
            "_id": f"p{i:07d}",
            "productTitle": f"Product {i}",
            "price": float(i % 1000),
            "brand": f"brand{i % 50}",
            "variantImageUrl": f"https://img.example/{i}.jpg",
            **_tags(i),
        }
        yield (
            index_pk,
            doc["_id"],
            doc["productTitle"],
            doc["price"],
            doc["variantImageUrl"],
            json.dumps(doc),
            index_terms(doc),
        )


async def database(data_dir: Path) -> str:
    url = db.start_embedded_postgres(data_dir)
    await db.ensure_database(url)
    migrate.upgrade(url)
    return url


async def load_index(
    pool: asyncpg.Pool,
    name: str,
    vectors: np.ndarray,
    *,
    vector_type: str = "halfvec",
    m: int | None = None,
    ef_construction: int | None = None,
    build_workers: int = 1,
    progress: bool = False,
    maintenance_work_mem: str = "2GB",
) -> tuple[IndexRecord, dict[str, float]]:
    """Create an index, COPY products and vectors in, build HNSW; returns timings in seconds."""
    n, dim = vectors.shape
    timings: dict[str, float] = {}
    async with pool.acquire() as conn:
        existing = await indexes.get_index(conn, name)
        if existing is not None:
            async with conn.transaction():
                await indexes.delete_index(conn, existing)
        async with conn.transaction():
            record = await indexes.create_index(
                conn, name=name, index_id=name + "-id", settings={}, model={}, dimensions=dim, vector_type=vector_type
            )
            # Bulk load first, build the graph once afterwards (much faster than incremental inserts).
            await conn.execute(f"DROP INDEX {record.vectors_table}_hnsw")
        started = time.perf_counter()
        for start in range(0, n, 20_000):
            stop = min(n, start + 20_000)
            if progress:
                print(f"  products {start:,}/{n:,}", flush=True)
            await conn.copy_records_to_table(
                "products",
                records=list(_product_rows(record.pk, start, stop)),
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
        pks = await conn.fetch("SELECT pk FROM products WHERE index_pk = $1 ORDER BY product_id", record.pk)
        timings["load_products_s"] = time.perf_counter() - started
        started = time.perf_counter()
        for start in range(0, n, 20_000):
            stop = min(n, start + 20_000)
            await conn.copy_records_to_table(
                record.vectors_table,
                records=[(pks[i]["pk"], vectors[i]) for i in range(start, stop)],
                columns=["product_pk", "embedding"],
            )
        timings["load_vectors_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
        await conn.execute(f"SET max_parallel_maintenance_workers = {int(build_workers)}")
        opclass = {"halfvec": "halfvec_cosine_ops", "vector": "vector_cosine_ops"}[vector_type]
        m = int(m or indexes.HNSW_M)
        ef_construction = int(ef_construction or indexes.HNSW_EF_CONSTRUCTION)
        await conn.execute(
            f"CREATE INDEX {record.vectors_table}_hnsw ON {record.vectors_table} USING hnsw (embedding {opclass}) "
            f"WITH (m = {m}, ef_construction = {ef_construction})"
        )
        timings["hnsw_build_s"] = time.perf_counter() - started
        await conn.execute("ANALYZE products")
        await conn.execute(f"ANALYZE {record.vectors_table}")
        timings["hnsw_bytes"] = float(
            await conn.fetchval(f"SELECT pg_relation_size('{record.vectors_table}_hnsw'::regclass)")
        )
        timings["table_bytes"] = float(await conn.fetchval(f"SELECT pg_table_size('{record.vectors_table}'::regclass)"))
    return record, timings


def matching_rows(n: int, tag: str) -> np.ndarray:
    every = round(1 / SELECTIVITIES[tag])
    return np.arange(0, n, every)


def exact_top_k(vectors: np.ndarray, rows: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    sims = vectors[rows] @ query
    best = rows[np.argsort(-sims, kind="stable")[:k]]
    return [f"p{i:07d}" for i in best]
