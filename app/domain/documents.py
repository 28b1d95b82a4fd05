"""Reading and deleting products by id (adding and updating them is app.domain.ingest)."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.storage import products
from app.storage.indexes import IndexRecord


def _storable(ids: list[str]) -> list[str]:
    # PostgreSQL text cannot hold NUL, so no stored product has such an id: not looked up
    # (a 500 found by fuzzing), answered as not found.
    return [i for i in ids if "\x00" not in i]


class DocumentsService:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def get(self, index: IndexRecord, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored documents among `ids`, by id."""
        return await products.get_documents(self.pool, index, _storable(ids))

    async def delete(self, index: IndexRecord, ids: list[str]) -> set[str]:
        """Delete the products among `ids` (vectors and features cascade); the ids that existed."""
        return await products.delete_documents(self.pool, index, _storable(ids))
