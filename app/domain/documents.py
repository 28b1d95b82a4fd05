"""Reading and deleting products by id (adding and updating them is app.domain.ingest)."""

from __future__ import annotations

from typing import Any

from app.storage import products
from app.storage.indexes import IndexRecord
from app.storage.replicas import Database


def _storable(ids: list[str]) -> list[str]:
    # PostgreSQL text cannot hold NUL, so no stored product has such an id: not looked up
    # (a 500 found by fuzzing), answered as not found.
    return [i for i in ids if "\x00" not in i]


class DocumentsService:
    def __init__(self, database: Database):
        self.db = database

    async def get(self, index: IndexRecord, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored documents among `ids`, by id (read from a replica when one is usable).

        A product that is not searchable yet (queue mode) carries `_embedding`:
        `{"status": "pending" | "failed", "message": ...}`.
        """
        wanted = _storable(ids)
        found = await self.db.read(lambda conn: products.get_documents_with_state(conn, index, wanted))
        return {
            product_id: {**doc, "_embedding": state} if state is not None else doc
            for product_id, (doc, state) in found.items()
        }

    async def delete(self, index: IndexRecord, ids: list[str]) -> set[str]:
        """Delete the products among `ids` (their vectors, features and text go too); the ids that existed."""
        return await products.delete_documents(self.db.primary, index, _storable(ids))
