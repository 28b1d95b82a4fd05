"""Bulk-loading products with COPY, for benchmarks and tests that need large catalogs fast.

One row builder (the `products` row the ingest code would store for a document: typed columns
mirror the doc, filter terms from `index_terms`) and one COPY loader, shared by
benchmarks.storefront_bench, benchmarks.text_bench and tests/test_filter_sql.py. Products only:
no vectors, no local features (the callers that need vectors COPY them themselves).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import asyncpg

from app.filters import index_terms

PRODUCT_COLUMNS = [
    "index_pk",
    "product_id",
    "product_title",
    "variant_title",
    "description",
    "price",
    "parent_product_id",
    "product_collections",
    "variant_image_url",
    "doc",
    "filter_terms",
]
PLACEHOLDER_IMAGE_URL = "https://img.test/p.jpg"


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def product_row(index_pk: int, doc: dict[str, Any]) -> tuple[Any, ...]:
    """The `products` row (PRODUCT_COLUMNS) for `doc`; `doc` goes in as JSON text."""
    collections = doc.get("productCollections")
    return (
        index_pk,
        doc["_id"],
        doc["productTitle"],
        _text_or_none(doc.get("variantTitle")),
        _text_or_none(doc.get("description")),
        float(doc["price"]),
        _text_or_none(doc.get("parentProductId")),
        [c for c in collections if isinstance(c, str)] if isinstance(collections, list) else [],
        _text_or_none(doc.get("variantImageUrl")) or PLACEHOLDER_IMAGE_URL,
        json.dumps(doc),
        index_terms(doc),
    )


async def copy_products(
    conn: asyncpg.Connection, index_pk: int, docs: Iterable[dict[str, Any]], chunk: int = 20_000
) -> None:
    """COPY `docs` into `products` for the index, `chunk` rows per COPY (bounded memory for big
    catalogs; `docs` may be a generator). No jsonb codec is registered on lookalike's connections,
    so `doc` travels as JSON text."""
    rows = (product_row(index_pk, doc) for doc in docs)
    while batch := list(itertools.islice(rows, chunk)):
        await conn.copy_records_to_table("products", records=batch, columns=PRODUCT_COLUMNS)
