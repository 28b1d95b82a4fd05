"""SQL for lookalike indexes: rows in `indexes` plus each index's own vector table and HNSW index."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from app.storage.schema import vectors_table_name

# HNSW build parameters (pgvector defaults; see README performance section).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64

# Each vector table also holds the product's local-feature aggregate (app.vision.aggregate), NULL
# until its local features exist, with its own HNSW index (NULLs are not indexed).
AGGREGATE_DIM = 512
AGGREGATE_CAST = f"halfvec({AGGREGATE_DIM})"
# ... and its colour descriptor (app.vision.colour, Hellinger-mapped: cosine = Bhattacharyya
# coefficient), computed with the local features, NULL until they exist; its own HNSW index too.
COLOUR_DIM = 112
COLOUR_CAST = f"halfvec({COLOUR_DIM})"

_OPCLASS = {"halfvec": "halfvec_cosine_ops", "vector": "vector_cosine_ops"}


@dataclass(frozen=True)
class IndexRecord:
    pk: int
    name: str
    index_id: str
    settings: dict[str, Any]
    model: dict[str, Any]
    dimensions: int
    vector_type: str
    created_at: datetime

    @property
    def vectors_table(self) -> str:
        return vectors_table_name(self.pk)

    @property
    def reverse_search(self) -> dict[str, Any]:
        return dict(self.settings.get("reverseImageSearch") or {})

    @property
    def reverse_search_enabled(self) -> bool:
        return bool(self.reverse_search.get("enabled"))

    @property
    def vector_cast(self) -> str:
        """SQL type of this index's embeddings, e.g. `halfvec(384)` (built from trusted ints)."""
        return f"{self.vector_type}({int(self.dimensions)})"


_COLUMNS = "pk, name, index_id, settings, model, dimensions, vector_type, created_at"


def _record(row: asyncpg.Record) -> IndexRecord:
    return IndexRecord(
        pk=row["pk"],
        name=row["name"],
        index_id=row["index_id"],
        settings=json.loads(row["settings"]),
        model=json.loads(row["model"]),
        dimensions=row["dimensions"],
        vector_type=row["vector_type"],
        created_at=row["created_at"],
    )


class IndexExistsError(Exception):
    pass


async def create_index(
    conn: asyncpg.Connection,
    *,
    name: str,
    index_id: str,
    settings: dict[str, Any],
    model: dict[str, Any],
    dimensions: int,
    vector_type: str,
) -> IndexRecord:
    """Insert the index and create its vector table + HNSW index, in the caller's transaction."""
    try:
        row = await conn.fetchrow(
            INSERT_INDEX,
            name,
            index_id,
            json.dumps(settings),
            json.dumps(model),
            dimensions,
            vector_type,
        )
    except asyncpg.UniqueViolationError as exc:
        raise IndexExistsError(name) from exc
    assert row is not None
    record = _record(row)
    for statement in vector_table_ddl(record):
        await conn.execute(statement)
    return record


INSERT_INDEX = f"""
INSERT INTO indexes (name, index_id, settings, model, dimensions, vector_type)
VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6)
RETURNING {_COLUMNS}
"""


def vector_table_ddl(record: IndexRecord) -> list[str]:
    """The index's own vector table, its three HNSW indexes, its comment and its product check.

    No foreign key to products: PostgreSQL would fire every index's cascade for every deleted
    product. The rows follow products by triggers instead (migration 0012): products' statement
    trigger deletes the gone products' rows here, and this table's row trigger checks (and
    key-share locks) the product of every row written, as the foreign key's check did."""
    # DDL cannot take bind parameters; every interpolated piece is an int or a fixed literal.
    table = record.vectors_table
    comment = _quote_literal(f"lookalike index {record.name}: image embeddings, one row per product")
    return [
        f"""CREATE TABLE {table} (
  product_pk bigint PRIMARY KEY,
  embedding {record.vector_cast} NOT NULL,
  local_aggregate {AGGREGATE_CAST},
  colour {COLOUR_CAST}
)""",
        f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding {_OPCLASS[record.vector_type]})"
        f" WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})",
        aggregate_index_ddl(table),
        colour_index_ddl(table),
        f"COMMENT ON TABLE {table} IS {comment}",
        product_trigger_ddl(table),
    ]


def product_trigger_ddl(table: str) -> str:
    """The vector table's row trigger that checks each row's product (migration 0012's function)."""
    return (
        f"CREATE TRIGGER {table}_product BEFORE INSERT OR UPDATE OF product_pk ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION lookalike_vector_product_exists()"
    )


def aggregate_index_ddl(table: str) -> str:
    return (
        f"CREATE INDEX IF NOT EXISTS {table}_local_hnsw ON {table} USING hnsw (local_aggregate halfvec_cosine_ops)"
        f" WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    )


def colour_index_ddl(table: str) -> str:
    return (
        f"CREATE INDEX IF NOT EXISTS {table}_colour_hnsw ON {table} USING hnsw (colour halfvec_cosine_ops)"
        f" WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    )


def _quote_literal(text: str) -> str:
    # Index names are validated against [a-z0-9_-]; quoting is belt and braces.
    return "'" + text.replace("'", "''") + "'"


GET_INDEX = f"SELECT {_COLUMNS} FROM indexes WHERE name = $1"


async def get_index(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> IndexRecord | None:
    row = await conn.fetchrow(GET_INDEX, name)
    return _record(row) if row else None


GET_INDEX_BY_PK = f"SELECT {_COLUMNS} FROM indexes WHERE pk = $1"


async def get_index_by_pk(conn: asyncpg.Connection | asyncpg.Pool, pk: int) -> IndexRecord | None:
    row = await conn.fetchrow(GET_INDEX_BY_PK, pk)
    return _record(row) if row else None


LIST_INDEXES = f"""
SELECT {", ".join("i." + c.strip() for c in _COLUMNS.split(","))},
       (SELECT count(*) FROM products p WHERE p.index_pk = i.pk) AS document_count
FROM indexes i
ORDER BY i.name
"""



async def list_indexes(conn: asyncpg.Connection | asyncpg.Pool) -> list[tuple[IndexRecord, int]]:
    rows = await conn.fetch(LIST_INDEXES)
    return [(_record(r), r["document_count"]) for r in rows]


UPDATE_SETTINGS = f"UPDATE indexes SET settings = $2::jsonb, updated_at = now() WHERE pk = $1 RETURNING {_COLUMNS}"


async def update_settings(conn: asyncpg.Connection, pk: int, settings: dict[str, Any]) -> IndexRecord:
    row = await conn.fetchrow(UPDATE_SETTINGS, pk, json.dumps(settings))
    assert row is not None
    return _record(row)


SET_INFERENCE = (
    "UPDATE indexes SET settings = jsonb_set(settings, '{inference}', $2::jsonb), updated_at = now()"
    f" WHERE pk = $1 RETURNING {_COLUMNS}"
)


async def set_inference(conn: asyncpg.Connection, pk: int, inference: dict[str, Any]) -> IndexRecord:
    """Store the `inference` settings (precision, guard numbers) alone: a concurrent PATCH of other keys is kept."""
    row = await conn.fetchrow(SET_INFERENCE, pk, json.dumps(inference))
    assert row is not None
    return _record(row)


DELETE_INDEX_ROW = "DELETE FROM indexes WHERE pk = $1"

# Deleting an index cascades through its products' vectors (one statement per index, by trigger),
# postings, facets and features (~2 s per 100k products on a quiet 2-core machine), so a large catalog
# would outlast the service's statement timeout: an admin's delete may take what it needs, in its
# transaction only.
DELETE_WITHOUT_TIMEOUT = "SET LOCAL statement_timeout = 0"
# The pool's client-side command timeout (statement timeout + 5 s) would cancel the delete all the
# same: its statements wait this long instead (an hour: a delete that outlasts it is stuck, not slow).
DELETE_CLIENT_TIMEOUT_S = 3600.0


async def delete_index(conn: asyncpg.Connection, record: IndexRecord) -> None:
    """The index row and, by cascade, its products (and by their triggers and cascades, its
    vectors, postings, facets and features), in the caller's transaction. Its vector table is left
    empty for `drop_orphan_vector_tables`: a DROP in this transaction would hold the table's
    ACCESS EXCLUSIVE lock (and wait for every reader of it) until the delete commits."""
    if not conn.is_in_transaction():
        raise RuntimeError("delete_index must run inside a transaction")
    await conn.execute(DELETE_WITHOUT_TIMEOUT)
    await conn.execute(DELETE_INDEX_ROW, record.pk, timeout=DELETE_CLIENT_TIMEOUT_S)


# Vector tables whose index row is gone (delete_index leaves them, empty).
ORPHAN_VECTOR_TABLES = """
SELECT c.relname::text FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' AND c.relname ~ '^vectors_[0-9]+$'
  AND NOT EXISTS (SELECT 1 FROM indexes i WHERE 'vectors_' || i.pk = c.relname)
ORDER BY c.relname
"""
# Dropping one waits at most this long for its lock: a waiting ACCESS EXCLUSIVE request queues
# every later read of the table behind it, so it gives up quickly and is retried (the next delete,
# the next start) rather than stall the service. (Vector tables created before migration 0012 that
# still had their foreign key would also lock `products`; 0012 removed those keys.)
DROP_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '500ms'"


def drop_vector_table_sql(table: str) -> str:
    """DROP of a name ORPHAN_VECTOR_TABLES returned (vectors_<digits>, checked again here)."""
    if not re.fullmatch(r"vectors_[0-9]+", table):
        raise ValueError(f"not a vector table: {table!r}")
    return f"DROP TABLE IF EXISTS {table}"


async def drop_orphan_vector_tables(pool: asyncpg.Pool) -> tuple[list[str], list[str]]:
    """Drop the vector tables of deleted indexes, each in a short transaction of its own.
    Returns (dropped, left): a table whose lock was not granted in time stays for a later call."""
    dropped: list[str] = []
    left: list[str] = []
    async with pool.acquire() as conn:
        for table in [r[0] for r in await conn.fetch(ORPHAN_VECTOR_TABLES)]:
            try:
                async with conn.transaction():
                    await conn.execute(DROP_LOCK_TIMEOUT)
                    await conn.execute(drop_vector_table_sql(table))
            except asyncpg.LockNotAvailableError:
                left.append(table)
            else:
                dropped.append(table)
    return dropped, left


def index_stats_sql(record: IndexRecord) -> str:
    """Product, vector and backfill counts and the vector table's size ($1 index pk)."""
    return f"""
        SELECT
          (SELECT count(*) FROM products WHERE index_pk = $1) AS products,
          (SELECT count(*) FROM {record.vectors_table}) AS vectors,
          (SELECT count(*) FROM products WHERE index_pk = $1 AND features_status = 'pending') AS pending,
          (SELECT count(*) FROM products WHERE index_pk = $1 AND features_status = 'failed') AS failed,
          (SELECT count(*) FROM products WHERE index_pk = $1 AND features_status = 'ready') AS ready,
          (SELECT count(*) FROM products WHERE index_pk = $1 AND embedding_status = 'pending')
            AS embeddings_pending,
          (SELECT count(*) FROM products WHERE index_pk = $1 AND embedding_status = 'failed')
            AS embeddings_failed,
          pg_total_relation_size('{record.vectors_table}'::regclass) AS vector_bytes
    """


async def index_stats(conn: asyncpg.Connection | asyncpg.Pool, record: IndexRecord) -> dict[str, int]:
    row = await conn.fetchrow(index_stats_sql(record), record.pk)
    assert row is not None
    return dict(row)


# One calibration per index at a time, across every `lookalike serve` process: a session-level
# advisory lock on a key derived from the index's pk, held on a connection of its own for the
# run (a crashed process's connection ends, and PostgreSQL releases the lock with it; a run
# cancelled before its unlock is covered by asyncpg's shielded release, whose reset runs
# pg_advisory_unlock_all()).
TRY_LOCK_CALIBRATION = "SELECT pg_try_advisory_lock(hashtextextended('lookalike.calibrate:' || $1::bigint, 0))"
UNLOCK_CALIBRATION = "SELECT pg_advisory_unlock(hashtextextended('lookalike.calibrate:' || $1::bigint, 0))"


@contextlib.asynccontextmanager
async def calibration_lock(pool: asyncpg.Pool, pk: int) -> AsyncIterator[bool]:
    """Whether this run got the index's calibration lock (False: another run holds it)."""
    async with pool.acquire() as conn:
        got = bool(await conn.fetchval(TRY_LOCK_CALIBRATION, pk))
        try:
            yield got
        finally:
            if got:
                await conn.execute(UNLOCK_CALIBRATION, pk)
