"""SQL for products, their embeddings (per-index vector table) and local features."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from app.storage.indexes import AGGREGATE_CAST, COLOUR_CAST, IndexRecord
from app.storage.schema import vectors_table_name


@dataclass
class ProductWrite:
    """One product ready to store: validated document, typed columns, and its vectors."""

    product_id: str
    doc: dict[str, Any]
    filter_terms: list[str]
    image_sha256: bytes
    embedding: np.ndarray
    features: dict[str, Any] | None  # local_features columns, or None
    features_status: str | None  # None (flag off), 'ready', 'pending' or 'failed'
    features_error: str | None = None


# Insert or fully replace one product row; returns its pk.
UPSERT_PRODUCT = """
INSERT INTO products (index_pk, product_id, product_title, variant_title, description, price,
                      parent_product_id, product_collections, variant_image_url, image_sha256, doc,
                      filter_terms, features_status, features_error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14)
ON CONFLICT (index_pk, product_id) DO UPDATE SET
  product_title = EXCLUDED.product_title, variant_title = EXCLUDED.variant_title,
  description = EXCLUDED.description, price = EXCLUDED.price,
  parent_product_id = EXCLUDED.parent_product_id, product_collections = EXCLUDED.product_collections,
  variant_image_url = EXCLUDED.variant_image_url, image_sha256 = EXCLUDED.image_sha256,
  doc = EXCLUDED.doc, filter_terms = EXCLUDED.filter_terms,
  features_status = EXCLUDED.features_status, features_error = EXCLUDED.features_error,
  embedding_status = 'ready', embedding_error = NULL, embedding_attempts = 0,
  claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
  updated_at = now()
RETURNING pk
"""


async def write_product(conn: asyncpg.Connection, index: IndexRecord, item: ProductWrite) -> int:
    """Insert or fully replace one product with its embedding and features (caller's transaction)."""
    doc = item.doc
    pk = await conn.fetchval(
        UPSERT_PRODUCT,
        index.pk,
        item.product_id,
        doc["productTitle"],
        doc.get("variantTitle"),
        doc.get("description"),
        float(doc["price"]),
        doc.get("parentProductId"),
        list(doc.get("productCollections") or []),
        doc["variantImageUrl"],
        item.image_sha256,
        json.dumps(doc, ensure_ascii=False),
        item.filter_terms,
        item.features_status,
        item.features_error,
    )
    await write_vectors(conn, index, pk, item.embedding, item.features)
    if item.features is None:
        await conn.execute(DELETE_FEATURES, pk)
    return int(pk)


def upsert_vectors_sql(index: IndexRecord) -> str:
    """A product's embedding, local aggregate and colour descriptor in the index's own vector table."""
    return f"""
        INSERT INTO {index.vectors_table} (product_pk, embedding, local_aggregate, colour)
        VALUES ($1, $2::{index.vector_cast}, $3::{AGGREGATE_CAST}, $4::{COLOUR_CAST})
        ON CONFLICT (product_pk) DO UPDATE SET embedding = EXCLUDED.embedding,
          local_aggregate = EXCLUDED.local_aggregate, colour = EXCLUDED.colour
    """


DELETE_FEATURES = "DELETE FROM local_features WHERE product_pk = $1"


async def write_vectors(
    conn: asyncpg.Connection, index: IndexRecord, pk: int, embedding: np.ndarray, features: dict[str, Any] | None
) -> None:
    """A product's embedding, aggregate and colour in its vector table, and its local features when it
    has them (ingest and the embedding workers both store a product this way)."""
    aggregate = features.get("aggregate") if features is not None else None
    colour = features.get("colour") if features is not None else None
    vectors = (embedding.astype(np.float32), _aggregate_value(aggregate), _aggregate_value(colour))
    await conn.execute(upsert_vectors_sql(index), pk, *vectors)
    if features is not None:
        await _upsert_feature_row(conn, pk, features)


def _aggregate_value(aggregate: Any) -> np.ndarray | None:
    """A stored vector (aggregate or colour descriptor) as float32, None when absent."""
    return None if aggregate is None else np.asarray(aggregate, np.float32)


async def upsert_features(
    conn: asyncpg.Connection, index_pk: int, product_pk: int, f: dict[str, Any]
) -> None:
    """Store a product's local features, their aggregate vector and its colour descriptor (caller's
    transaction)."""
    await _upsert_feature_row(conn, product_pk, f)
    await conn.execute(
        update_aggregate_sql(index_pk),
        product_pk,
        _aggregate_value(f.get("aggregate")),
        _aggregate_value(f.get("colour")),
    )


def update_aggregate_sql(index_pk: int) -> str:
    """A backfilled product's local aggregate and colour descriptor."""
    return (
        f"UPDATE {vectors_table_name(index_pk)} SET local_aggregate = $2::{AGGREGATE_CAST},"
        f" colour = $3::{COLOUR_CAST} WHERE product_pk = $1"
    )


UPSERT_FEATURES = """
INSERT INTO local_features (product_pk, algorithm, keypoint_count, keypoints, descriptors,
                            image_width, image_height)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (product_pk) DO UPDATE SET algorithm = EXCLUDED.algorithm,
  keypoint_count = EXCLUDED.keypoint_count, keypoints = EXCLUDED.keypoints,
  descriptors = EXCLUDED.descriptors, image_width = EXCLUDED.image_width,
  image_height = EXCLUDED.image_height, created_at = now()
"""


async def _upsert_feature_row(conn: asyncpg.Connection, product_pk: int, f: dict[str, Any]) -> None:
    await conn.execute(
        UPSERT_FEATURES,
        product_pk,
        f["algorithm"],
        f["keypoint_count"],
        f["keypoints"],
        f["descriptors"],
        f["image_width"],
        f["image_height"],
    )


@dataclass(frozen=True)
class ReusableImage:
    embedding: np.ndarray
    features: dict[str, Any] | None


async def reusable_images(
    conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord, digests: Sequence[bytes]
) -> dict[bytes, ReusableImage]:
    """Embeddings (and features) already computed in this index for images with these bytes."""
    if not digests:
        return {}
    rows = await conn.fetch(reusable_images_sql(index), index.pk, list(digests))
    found: dict[bytes, ReusableImage] = {}
    for r in rows:
        features = None
        if r["algorithm"] is not None:
            features = {
                k: r[k]
                for k in (
                    "algorithm",
                    "keypoint_count",
                    "keypoints",
                    "descriptors",
                    "image_width",
                    "image_height",
                )
            }
            features["aggregate"] = _aggregate_value(r["aggregate"])
            features["colour"] = _aggregate_value(r["colour"])
        found[bytes(r["image_sha256"])] = ReusableImage(
            np.asarray(r["embedding"], dtype=np.float32), features
        )
    return found


def reusable_images_sql(index: IndexRecord) -> str:
    """Vectors and features already computed for images with these digests ($2), one row per digest."""
    return f"""
        SELECT DISTINCT ON (p.image_sha256) p.image_sha256, v.embedding::real[] AS embedding,
               v.local_aggregate::real[] AS aggregate, v.colour::real[] AS colour,
               f.algorithm, f.keypoint_count, f.keypoints, f.descriptors, f.image_width, f.image_height
        FROM products p
        JOIN {index.vectors_table} v ON v.product_pk = p.pk
        LEFT JOIN local_features f ON f.product_pk = p.pk
        WHERE p.index_pk = $1 AND p.image_sha256 = ANY($2::bytea[])
        ORDER BY p.image_sha256, f.product_pk NULLS LAST
    """


GET_DOCUMENTS = "SELECT product_id, doc FROM products WHERE index_pk = $1 AND product_id = ANY($2::text[])"


async def get_documents(
    conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord, product_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch(GET_DOCUMENTS, index.pk, list(product_ids))
    return {r["product_id"]: json.loads(r["doc"]) for r in rows}


GET_DOCUMENTS_WITH_STATE = (
    "SELECT product_id, doc, embedding_status, embedding_error FROM products "
    "WHERE index_pk = $1 AND product_id = ANY($2::text[])"
)


async def get_documents_with_state(
    conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord, product_ids: Sequence[str]
) -> dict[str, tuple[dict[str, Any], dict[str, str] | None]]:
    """Documents by id, each with its embedding state when it is not 'ready' (queue mode)."""
    rows = await conn.fetch(
        GET_DOCUMENTS_WITH_STATE,
        index.pk,
        list(product_ids),
    )
    found: dict[str, tuple[dict[str, Any], dict[str, str] | None]] = {}
    for r in rows:
        state: dict[str, str] | None = None
        if r["embedding_status"] == "pending":
            state = {"status": "pending", "message": "queued for embedding; not searchable yet"}
        elif r["embedding_status"] == "failed":
            state = {"status": "failed", "message": r["embedding_error"] or "embedding failed"}
        found[r["product_id"]] = (json.loads(r["doc"]), state)
    return found


GET_PRODUCT_STATES = (
    "SELECT product_id, doc, image_sha256 FROM products WHERE index_pk = $1 AND product_id = ANY($2::text[])"
)


async def get_product_states(
    conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord, product_ids: Sequence[str]
) -> dict[str, tuple[dict[str, Any], bytes | None]]:
    """Current document and image digest per id (for partial updates)."""
    rows = await conn.fetch(GET_PRODUCT_STATES, index.pk, list(product_ids))
    return {
        r["product_id"]: (json.loads(r["doc"]), bytes(r["image_sha256"]) if r["image_sha256"] else None)
        for r in rows
    }


UPDATE_DOCUMENT_ONLY = """
UPDATE products SET product_title = $3, variant_title = $4, description = $5, price = $6,
  parent_product_id = $7, product_collections = $8, doc = $9::jsonb, filter_terms = $10,
  updated_at = now()
WHERE index_pk = $1 AND product_id = $2
"""


async def update_document_only(
    conn: asyncpg.Connection,
    index: IndexRecord,
    product_id: str,
    doc: dict[str, Any],
    filter_terms: list[str],
) -> bool:
    """Partial update that does not touch the image: rewrite typed columns and the document."""
    result = await conn.execute(
        UPDATE_DOCUMENT_ONLY,
        index.pk,
        product_id,
        doc["productTitle"],
        doc.get("variantTitle"),
        doc.get("description"),
        float(doc["price"]),
        doc.get("parentProductId"),
        list(doc.get("productCollections") or []),
        json.dumps(doc, ensure_ascii=False),
        filter_terms,
    )
    return result.endswith(" 1")


DELETE_DOCUMENTS = "DELETE FROM products WHERE index_pk = $1 AND product_id = ANY($2::text[]) RETURNING product_id"


async def delete_documents(
    conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord, product_ids: Sequence[str]
) -> set[str]:
    rows = await conn.fetch(DELETE_DOCUMENTS, index.pk, list(product_ids))
    return {r["product_id"] for r in rows}


MARK_FEATURES_PENDING = """
UPDATE products p SET features_status = 'pending', features_error = NULL
WHERE p.index_pk = $1
  AND (p.features_status IS DISTINCT FROM 'ready'
       OR NOT EXISTS (SELECT 1 FROM local_features f WHERE f.product_pk = p.pk))
"""


async def mark_features_pending(conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord) -> int:
    """Flag turned on: every product without features becomes backfill work."""
    result = await conn.execute(MARK_FEATURES_PENDING, index.pk)
    return int(result.split()[-1])


CLEAR_FEATURES_WANTED = "UPDATE products SET features_status = NULL WHERE index_pk = $1 AND features_status = 'pending'"


async def clear_features_wanted(conn: asyncpg.Connection | asyncpg.Pool, index: IndexRecord) -> None:
    """Flag turned off: stop backfill work; stored features stay for a later re-enable."""
    await conn.execute(CLEAR_FEATURES_WANTED, index.pk)


# The backfill queue: pending rows, locked so that concurrent workers take different ones.
CLAIM_PENDING_FEATURES = """
SELECT p.pk, p.index_pk, p.variant_image_url, p.image_sha256
FROM products p
WHERE p.features_status = 'pending' AND p.embedding_status = 'ready'
ORDER BY p.index_pk, p.pk
LIMIT $1
FOR UPDATE SKIP LOCKED
"""


async def claim_pending_features(
    conn: asyncpg.Connection, limit: int
) -> list[tuple[int, int, str, bytes | None]]:
    """Pending backfill rows (product pk, index pk, image URL, digest), locked for this worker."""
    rows = await conn.fetch(CLAIM_PENDING_FEATURES, limit)
    return [(r["pk"], r["index_pk"], r["variant_image_url"], r["image_sha256"]) for r in rows]


FEATURES_READY = """
UPDATE products SET features_status = 'ready', features_error = NULL
WHERE pk = $1 AND features_status = 'pending'
"""
FEATURES_FAILED = """
UPDATE products SET features_status = 'failed', features_error = $2
WHERE pk = $1 AND features_status = 'pending'
"""


async def finish_features(
    conn: asyncpg.Connection, index_pk: int, product_pk: int, features: dict[str, Any] | None, error: str | None
) -> None:
    if features is not None:
        await upsert_features(conn, index_pk, product_pk, features)
        await conn.execute(FEATURES_READY, product_pk)
    else:
        await conn.execute(FEATURES_FAILED, product_pk, error)
