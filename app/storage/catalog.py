"""Transactional product writes for the ingest pipeline (the storage edge)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg

from app.storage import products, queue
from app.storage.indexes import IndexRecord

log = logging.getLogger("lookalike.storage")


# A row the database refuses (bad data, a constraint, a value over a limit) fails its item only.
_ITEM_ERRORS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)


class CatalogStore:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def reusable(
        self, index: IndexRecord, digests: Sequence[bytes]
    ) -> dict[bytes, products.ReusableImage]:
        return await products.reusable_images(self.pool, index, digests)

    async def write(self, index: IndexRecord, writes: Sequence[products.ProductWrite]) -> dict[int, str]:
        """Store the batch; returns {position: error} for items that could not be stored.

        The whole batch commits in one transaction (fast path). If that fails, each item
        gets its own transaction so one bad row never blocks the others. An item absent
        from the result is committed, hence durable (synchronous commit).
        """
        if not writes:
            return {}
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                for item in writes:
                    await products.write_product(conn, index, item)
            return {}
        except (
            asyncpg.DataError,
            asyncpg.IntegrityConstraintViolationError,
            asyncpg.ProgramLimitExceededError,
        ):
            log.warning("batch write failed; retrying items one by one", exc_info=True)
        errors: dict[int, str] = {}
        for position, item in enumerate(writes):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await products.write_product(conn, index, item)
            except (
                asyncpg.DataError,
                asyncpg.IntegrityConstraintViolationError,
                asyncpg.ProgramLimitExceededError,
            ) as exc:
                errors[position] = f"product could not be stored: {exc.__class__.__name__}"
        return errors

    async def enqueue(
        self, index: IndexRecord, docs: Sequence[tuple[dict, list[str]]]
    ) -> dict[int, str]:
        """Store documents as pending embedding (queue mode); {position: error} as for `write`."""
        if not docs:
            return {}
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                for doc, terms in docs:
                    await queue.enqueue_product(conn, index, doc, terms)
            return {}
        except _ITEM_ERRORS:
            log.warning("batch enqueue failed; retrying items one by one", exc_info=True)
        errors: dict[int, str] = {}
        for position, (doc, terms) in enumerate(docs):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await queue.enqueue_product(conn, index, doc, terms)
            except _ITEM_ERRORS as exc:
                errors[position] = f"product could not be stored: {exc.__class__.__name__}"
        return errors

    async def states(self, index: IndexRecord, ids: Sequence[str]) -> dict[str, tuple[dict, bytes | None]]:
        return await products.get_product_states(self.pool, index, ids)

    async def update_document_only(
        self, index: IndexRecord, product_id: str, doc: dict, terms: list[str]
    ) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            return await products.update_document_only(conn, index, product_id, doc, terms)
