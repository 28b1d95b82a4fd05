"""SQL for lookalike indexes: rows in `indexes` plus each index's own vector table and HNSW index."""

from __future__ import annotations

import json
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
            f"INSERT INTO indexes (name, index_id, settings, model, dimensions, vector_type) "
            f"VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6) RETURNING {_COLUMNS}",
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
    table = record.vectors_table
    # DDL cannot take bind parameters; every interpolated piece is an int or a fixed literal.
    await conn.execute(
        f"CREATE TABLE {table} ("
        f" product_pk bigint PRIMARY KEY REFERENCES products(pk) ON DELETE CASCADE,"
        f" embedding {record.vector_cast} NOT NULL,"
        f" local_aggregate {AGGREGATE_CAST})"
    )
    await conn.execute(
        f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding {_OPCLASS[vector_type]}) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    )
    await create_aggregate_index(conn, table)
    comment = _quote_literal(f"lookalike index {name}: image embeddings, one row per product")
    await conn.execute(f"COMMENT ON TABLE {table} IS {comment}")
    return record


async def create_aggregate_index(conn: asyncpg.Connection, table: str) -> None:
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {table}_local_hnsw ON {table} USING hnsw (local_aggregate halfvec_cosine_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
    )


def _quote_literal(text: str) -> str:
    # Index names are validated against [a-z0-9_-]; quoting is belt and braces.
    return "'" + text.replace("'", "''") + "'"


async def get_index(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> IndexRecord | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM indexes WHERE name = $1", name)
    return _record(row) if row else None


async def get_index_by_pk(conn: asyncpg.Connection | asyncpg.Pool, pk: int) -> IndexRecord | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM indexes WHERE pk = $1", pk)
    return _record(row) if row else None


async def list_indexes(conn: asyncpg.Connection | asyncpg.Pool) -> list[tuple[IndexRecord, int]]:
    rows = await conn.fetch(
        f"SELECT {', '.join('i.' + c.strip() for c in _COLUMNS.split(','))},"
        " (SELECT count(*) FROM products p WHERE p.index_pk = i.pk) AS document_count"
        " FROM indexes i ORDER BY i.name"
    )
    return [(_record(r), r["document_count"]) for r in rows]


async def update_settings(conn: asyncpg.Connection, pk: int, settings: dict[str, Any]) -> IndexRecord:
    row = await conn.fetchrow(
        f"UPDATE indexes SET settings = $2::jsonb, updated_at = now() WHERE pk = $1 RETURNING {_COLUMNS}",
        pk,
        json.dumps(settings),
    )
    assert row is not None
    return _record(row)


async def delete_index(conn: asyncpg.Connection, record: IndexRecord) -> None:
    """Drop the vector table first (its FK points at products), then the row; products cascade."""
    await conn.execute(f"DROP TABLE IF EXISTS {record.vectors_table}")
    await conn.execute("DELETE FROM indexes WHERE pk = $1", record.pk)


async def index_stats(conn: asyncpg.Connection | asyncpg.Pool, record: IndexRecord) -> dict[str, int]:
    row = await conn.fetchrow(
        f"""
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
        """,
        record.pk,
    )
    assert row is not None
    return dict(row)
