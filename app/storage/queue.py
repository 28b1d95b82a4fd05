"""SQL of the embedding queue (LOOKALIKE_INGEST_MODE=queue): products table rows are the queue.

A queued product is a `products` row with `embedding_status = 'pending'` and no vector
row. Workers claim batches with `FOR UPDATE SKIP LOCKED` (concurrent workers never get
the same rows) and stamp them with a lease (`claimed_by`, `lease_expires_at`) in a short
transaction; the claim is not held in an open transaction while images are fetched and
embedded. A worker that dies leaves its lease to lapse, and the products are claimed
again by the next worker; a result is written only while the writer still holds the
claim (a product replaced by the API meanwhile, or re-claimed after a lapsed lease, is
not overwritten with stale work).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from app.storage.indexes import IndexRecord
from app.storage.products import write_vectors


@dataclass(frozen=True)
class QueuedProduct:
    product_pk: int
    index_pk: int
    product_id: str
    image_url: str


ENQUEUE = """
INSERT INTO products (index_pk, product_id, product_title, variant_title, description, price,
                      parent_product_id, product_collections, variant_image_url, image_sha256, doc,
                      filter_terms, features_status, features_error, embedding_status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10::jsonb, $11, $12, NULL, 'pending')
ON CONFLICT (index_pk, product_id) DO UPDATE SET
  product_title = EXCLUDED.product_title, variant_title = EXCLUDED.variant_title,
  description = EXCLUDED.description, price = EXCLUDED.price,
  parent_product_id = EXCLUDED.parent_product_id, product_collections = EXCLUDED.product_collections,
  variant_image_url = EXCLUDED.variant_image_url, image_sha256 = NULL,
  doc = EXCLUDED.doc, filter_terms = EXCLUDED.filter_terms,
  features_status = EXCLUDED.features_status, features_error = NULL,
  embedding_status = 'pending', embedding_error = NULL, embedding_attempts = 0,
  claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
  updated_at = now()
RETURNING pk
"""


async def enqueue_product(
    conn: asyncpg.Connection, index: IndexRecord, doc: dict[str, Any], filter_terms: list[str]
) -> int:
    """Store (or fully replace) a product as pending embedding; its old vector and features go."""
    pk = await conn.fetchval(
        ENQUEUE,
        index.pk,
        doc["_id"],
        doc["productTitle"],
        doc.get("variantTitle"),
        doc.get("description"),
        float(doc["price"]),
        doc.get("parentProductId"),
        list(doc.get("productCollections") or []),
        doc["variantImageUrl"],
        json.dumps(doc, ensure_ascii=False),
        filter_terms,
        # the worker extracts local features with the embedding while the flag is on
        "pending" if index.reverse_search_enabled else None,
    )
    await conn.execute(drop_vector_sql(index), pk)
    await conn.execute(DROP_FEATURES, pk)
    return int(pk)


def drop_vector_sql(index: IndexRecord) -> str:
    return f"DELETE FROM {index.vectors_table} WHERE product_pk = $1"


DROP_FEATURES = "DELETE FROM local_features WHERE product_pk = $1"


GIVE_UP = """
UPDATE products
SET embedding_status = 'failed', claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
    embedding_error = 'embedding did not finish in ' || embedding_attempts
                      || ' attempts (each claim lapsed: its worker died or overran the lease)'
WHERE embedding_status = 'pending' AND embedding_attempts >= $1 AND lease_expires_at < now()
"""

CLAIM = """
WITH next AS (
  SELECT pk FROM products
  WHERE embedding_status = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at < now())
  ORDER BY pk
  LIMIT $1
  FOR UPDATE SKIP LOCKED
)
UPDATE products p
SET claimed_by = $2, claimed_at = now(), lease_expires_at = now() + make_interval(secs => $3),
    embedding_attempts = p.embedding_attempts + 1
FROM next
WHERE p.pk = next.pk
RETURNING p.pk, p.index_pk, p.product_id, p.variant_image_url
"""


async def claim_batch(
    conn: asyncpg.Connection, claim: str, limit: int, lease_s: float, max_attempts: int
) -> list[QueuedProduct]:
    """Claim up to `limit` pending products for `claim` (committed before any work starts)."""
    async with conn.transaction():
        await conn.execute(GIVE_UP, max_attempts)
        rows = await conn.fetch(CLAIM, limit, claim, float(lease_s))
    return [QueuedProduct(r["pk"], r["index_pk"], r["product_id"], r["variant_image_url"]) for r in sorted(
        rows, key=lambda r: r["pk"])]


RELEASE_CLAIM = """
UPDATE products SET claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
       embedding_attempts = greatest(embedding_attempts - 1, 0)
WHERE claimed_by = $1 AND embedding_status = 'pending'
"""


async def release_claim(conn: asyncpg.Connection | asyncpg.Pool, claim: str) -> int:
    """Give the claim's products back to the queue now (a worker that cannot do them)."""
    result = await conn.execute(RELEASE_CLAIM, claim)
    return int(result.split()[-1])


@dataclass
class EmbeddingResult:
    product_pk: int
    image_sha256: bytes
    embedding: np.ndarray
    features: dict[str, Any] | None  # local_features columns + "aggregate", or None
    features_status: str | None  # 'ready' / 'failed' when extracted (or tried); None = leave as is
    features_error: str | None = None


MARK_READY = """
UPDATE products
SET embedding_status = 'ready', embedding_error = NULL, image_sha256 = $3,
    claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL,
    features_status = coalesce($4, features_status),
    features_error = CASE WHEN $4::text IS NULL THEN features_error ELSE $5 END,
    updated_at = now()
WHERE pk = $1 AND claimed_by = $2 AND embedding_status = 'pending'
RETURNING pk
"""


async def finish(conn: asyncpg.Connection, index: IndexRecord, claim: str, result: EmbeddingResult) -> bool:
    """Store a claimed product's embedding (and features) and mark it ready; False if the claim was lost."""
    pk = await conn.fetchval(
        MARK_READY,
        result.product_pk,
        claim,
        result.image_sha256,
        result.features_status,
        result.features_error,
    )
    if pk is None:
        return False
    await write_vectors(conn, index, pk, result.embedding, result.features)
    return True


MARK_FAILED = """
UPDATE products SET embedding_status = 'failed', embedding_error = $3,
       claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL, updated_at = now()
WHERE pk = $1 AND claimed_by = $2 AND embedding_status = 'pending'
RETURNING pk
"""


async def fail(conn: asyncpg.Connection | asyncpg.Pool, claim: str, product_pk: int, error: str) -> bool:
    """Mark a claimed product failed with the reason (shown by /stats, get-documents, the DBA views)."""
    pk = await conn.fetchval(
        MARK_FAILED,
        product_pk,
        claim,
        error,
    )
    return pk is not None


PENDING_INDEXES = "SELECT DISTINCT index_pk FROM products WHERE embedding_status = 'pending'"


async def pending_indexes(conn: asyncpg.Connection | asyncpg.Pool) -> list[int]:
    """The indexes with queued products (a worker checks it can load their models first)."""
    rows = await conn.fetch(PENDING_INDEXES)
    return [r["index_pk"] for r in rows]


def group_by_index(batch: Sequence[QueuedProduct]) -> dict[int, list[QueuedProduct]]:
    groups: dict[int, list[QueuedProduct]] = {}
    for item in batch:
        groups.setdefault(item.index_pk, []).append(item)
    return groups
