"""Index management: create, list, change settings, delete, statistics.

Creating an index validates the settings, loads the model once to learn its dimension, then
inserts the index with its own vector table and HNSW index (one transaction).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.auth import new_index_id
from app.domain import index_settings, inference
from app.domain.backfill import FeatureBackfill
from app.errors import ApiError, bad_request
from app.storage import indexes, products
from app.storage.indexes import IndexRecord
from app.vision.model import ModelSpec, ModelUnavailableError
from app.vision.service import VisionService

__all__ = ["IndexAdmin", "IndexRecord", "IndexStatistics", "create_index"]

log = logging.getLogger("lookalike.indexes")

# pgvector's HNSW limits per element type.
MAX_HNSW_DIMENSIONS = {"halfvec": 4000, "vector": 2000}


def _exists(name: str) -> ApiError:
    return ApiError(409, "index_exists", f"index {name!r} already exists")


async def create_index(pool: asyncpg.Pool, vision: VisionService, name: str, body: Any) -> IndexRecord:
    name = index_settings.validate_index_name(name)
    create = index_settings.parse_create_body(body)
    try:
        spec = ModelSpec.parse(create.model)
    except ValueError as exc:
        raise bad_request(f"model: {exc}", "invalid_model") from exc
    if await indexes.get_index(pool, name) is not None:
        raise _exists(name)
    try:
        model = await vision.load_model(spec)
    except ModelUnavailableError as exc:
        raise bad_request(str(exc), "model_unavailable") from exc
    except ValueError as exc:  # an architecture that cannot be built or run at the requested imageSize
        raise bad_request(f"model: {exc}", "invalid_model") from exc
    # The pass size ingest will use, measured now beside the export (a new index embeds at fp32)
    # rather than inside the first ingest call: 1-4 s of forward passes for a ViT on 2 cores.
    await vision.ingest_batch_size(spec, "fp32")
    max_dims = MAX_HNSW_DIMENSIONS[create.vector_type]
    if model.dim > max_dims:
        raise bad_request(
            f"model {spec.name} produces {model.dim}-d embeddings; HNSW on {create.vector_type} supports "
            f"at most {max_dims}",
            "invalid_model",
        )
    settings = {
        "model": spec.to_json(),
        "vectorType": create.vector_type,
        "dimensions": model.dim,
        "reverseImageSearch": create.reverse_search,
        "inference": inference.initial_settings(vision, model),
    }
    try:
        async with pool.acquire() as conn, conn.transaction():
            return await indexes.create_index(
                conn,
                name=name,
                index_id=new_index_id(),
                settings=settings,
                model=spec.to_json(),
                dimensions=model.dim,
                vector_type=create.vector_type,
            )
    except indexes.IndexExistsError as exc:
        raise _exists(name) from exc


@dataclass(frozen=True)
class IndexStatistics:
    products: int
    vectors: int
    vector_bytes: int
    features_ready: int
    features_pending: int
    features_failed: int
    embeddings_pending: int
    embeddings_failed: int


class IndexAdmin:
    """Index management for the HTTP layer: every storage call and transaction lives here."""

    def __init__(self, pool: asyncpg.Pool, vision: VisionService, backfill: FeatureBackfill):
        self.pool = pool
        self.vision = vision
        self.backfill = backfill

    async def find(self, name: str) -> IndexRecord | None:
        # A name that could never have been created is not looked up: path text may hold
        # NUL or other characters PostgreSQL rejects (500s found by fuzzing).
        if not index_settings.INDEX_NAME_RE.fullmatch(name):
            return None
        return await indexes.get_index(self.pool, name)

    async def create(self, name: str, body: Any) -> IndexRecord:
        return await create_index(self.pool, self.vision, name, body)

    async def with_document_counts(self) -> list[tuple[IndexRecord, int]]:
        """Every index with its document count, by name."""
        return await indexes.list_indexes(self.pool)

    async def change_settings(self, record: IndexRecord, body: Any) -> IndexRecord:
        """Apply a settings patch; turning reverse image search on queues the local-feature backfill
        (in the same transaction), turning it off stops wanting features."""
        new_settings = index_settings.parse_patch_body(body, record.settings)
        was_enabled = record.reverse_search_enabled
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await indexes.update_settings(conn, record.pk, new_settings)
            if updated.reverse_search_enabled and not was_enabled:
                await products.mark_features_pending(conn, updated)
            elif was_enabled and not updated.reverse_search_enabled:
                await products.clear_features_wanted(conn, updated)
        if updated.reverse_search_enabled and not was_enabled:
            self.backfill.wake()
        return updated

    async def delete(self, record: IndexRecord) -> None:
        """The index, its products, vectors and features, in one transaction; then its emptied
        vector table (and any an earlier delete left) on its own, briefly (storage.indexes)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await indexes.delete_index(conn, record)
        await drop_orphan_vector_tables(self.pool)

    async def statistics(self, record: IndexRecord) -> IndexStatistics:
        stats = await indexes.index_stats(self.pool, record)
        return IndexStatistics(
            products=stats["products"],
            vectors=stats["vectors"],
            vector_bytes=stats["vector_bytes"],
            features_ready=stats["ready"],
            features_pending=stats["pending"],
            features_failed=stats["failed"],
            embeddings_pending=stats["embeddings_pending"],
            embeddings_failed=stats["embeddings_failed"],
        )


async def drop_orphan_vector_tables(pool: asyncpg.Pool) -> None:
    """Best effort: a table left (its lock not granted in time, or a database error) is dropped by
    a later delete or the next start; it holds no rows."""
    try:
        dropped, left = await indexes.drop_orphan_vector_tables(pool)
    except (asyncpg.PostgresError, OSError):
        log.warning("dropping deleted indexes' vector tables failed; the next delete or start retries", exc_info=True)
        return
    if left:
        log.info("vector tables of deleted indexes still in use, left for later: %s", ", ".join(left))
    if dropped:
        log.info("dropped the vector tables of deleted indexes: %s", ", ".join(dropped))
