"""What deleting products costs as the database holds more indexes (migration 0012's reason).

    python -m benchmarks.delete_bench [--products 20000] [--indexes 0,10,50,200] [--database-url URL]

A fresh database (on the embedded PostgreSQL in a temp dir unless --database-url names a
server), migrated to head. One index holds `--products` products with vector rows; for each
count of *other* (empty) indexes, the products are inserted again and deleted in one
statement, timed (and the vector rows' insert), twice: with the schema as it is (triggers) and with every vector table's
old foreign key to products put back (each index's table as it was before 0012). Writes
bench-results/delete-cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from app.storage import db, indexes, migrate


async def _fill(conn: asyncpg.Connection, record: indexes.IndexRecord, n: int) -> float:
    """Insert `n` products and their vector rows; returns the seconds the vector rows took."""
    await conn.execute(
        "INSERT INTO products (index_pk, product_id, product_title, price, variant_image_url, doc)"
        " SELECT $1, 'p' || i, 't', 1, 'http://x/a.png', '{}'::jsonb FROM generate_series(1, $2) i",
        record.pk,
        n,
    )
    started = time.perf_counter()
    await conn.execute(
        f"INSERT INTO {record.vectors_table} (product_pk, embedding)"
        " SELECT pk, '[1,0,0]' FROM products WHERE index_pk = $1",
        record.pk,
    )
    return time.perf_counter() - started


async def _timed_delete(conn: asyncpg.Connection, record: indexes.IndexRecord, n: int) -> tuple[float, float]:
    """(seconds to insert the vector rows, seconds to delete the products)."""
    inserted = await _fill(conn, record, n)
    started = time.perf_counter()
    await conn.execute("DELETE FROM products WHERE index_pk = $1", record.pk, timeout=3600)
    seconds = time.perf_counter() - started
    assert await conn.fetchval(f"SELECT count(*) FROM {record.vectors_table}") == 0
    return inserted, seconds


async def _set_foreign_keys(conn: asyncpg.Connection, tables: list[str], on: bool) -> None:
    for table in tables:
        if on:
            await conn.execute(f"DROP TRIGGER {table}_product ON {table}")
            await conn.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {table}_product_pk_fkey FOREIGN KEY (product_pk)"
                " REFERENCES products(pk) ON DELETE CASCADE"
            )
        else:
            await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_product_pk_fkey")
            await conn.execute(indexes.product_trigger_ddl(table))


async def run(url: str, products: int, counts: list[int]) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET statement_timeout = 0")
        created: list[indexes.IndexRecord] = []

        async def create(name: str) -> indexes.IndexRecord:
            async with conn.transaction():
                record = await indexes.create_index(
                    conn, name=name, index_id=f"{name}-id", settings={}, model={}, dimensions=3, vector_type="halfvec"
                )
            created.append(record)
            return record

        full = await create("catalog")
        out = []
        for count in counts:
            while len(created) < count + 1:
                await create(f"other-{len(created)}")
            tables = [r.vectors_table for r in created]
            insert_triggers, triggers = await _timed_delete(conn, full, products)
            await _set_foreign_keys(conn, tables, on=True)
            insert_keys, keys = await _timed_delete(conn, full, products)
            await _set_foreign_keys(conn, tables, on=False)
            row = {
                "other_indexes": count,
                "delete_triggers_s": round(triggers, 3),
                "delete_foreign_keys_s": round(keys, 3),
                "insert_vectors_triggers_s": round(insert_triggers, 3),
                "insert_vectors_foreign_keys_s": round(insert_keys, 3),
            }
            print(json.dumps(row), flush=True)
            out.append(row)
        return out
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--indexes", default="0,10,50,200", help="counts of other (empty) indexes")
    ap.add_argument("--database-url", help="a PostgreSQL server with pgvector (default: embedded, temp dir)")
    ap.add_argument("--out", type=Path, default=Path("bench-results/delete-cost.json"))
    args = ap.parse_args()
    counts = [int(c) for c in args.indexes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        server = args.database_url or db.start_embedded_postgres(Path(tmp) / "pg")
        url = urlsplit(server)._replace(path=f"/delete_bench_{secrets.token_hex(3)}").geturl()
        asyncio.run(db.ensure_database(url))
        try:
            migrate.upgrade(url)
            rows = asyncio.run(run(url, args.products, counts))
        finally:
            asyncio.run(db.drop_database(url))
    report = {"benchmark": "delete_cost", "products": args.products, "loadavg": os.getloadavg(), "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
