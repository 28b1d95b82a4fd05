"""Product documents: validation (declared in app.contract.documents) and partial updates (pure)."""

from __future__ import annotations

from typing import Any

from app.contract.documents import DocumentError, Product, check_id, document_id

__all__ = ["DocumentError", "document_id", "merge_partial", "validate_document"]


def validate_document(raw: Any) -> dict[str, Any]:
    """A complete product document (add/replace), normalised for storage.

    `collections` is accepted as an alias of `productCollections` and stored under the latter.
    """
    return Product.check_item(raw)


def merge_partial(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply a partial update (only `_id` required) and validate the result as a whole document."""
    if not isinstance(patch, dict):
        raise DocumentError("each document must be a JSON object")
    check_id(patch.get("_id"))
    merged = dict(current)
    for name, value in patch.items():
        if name == "collections":
            merged.pop("productCollections", None)
            merged["productCollections"] = value
        else:
            merged[name] = value
    return validate_document(merged)
