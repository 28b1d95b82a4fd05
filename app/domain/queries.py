"""Search requests (declared in app.contract.search) and hit shaping (pure)."""

from __future__ import annotations

from typing import Any

# The requests are declared (and validated) in the contract; the services take them as they are.
from app.contract.search import ReverseSearchRequest, SearchRequest

__all__ = ["DEFAULT_HIT_FIELDS", "ReverseSearchRequest", "SearchRequest", "shape_hit"]

DEFAULT_HIT_FIELDS = ("productTitle", "variantTitle", "price", "variantImageUrl", "collections")


def shape_hit(doc: dict[str, Any], score: float | None, attributes: list[str] | None) -> dict[str, Any]:
    """A hit: the default fields (or those asked for), plus `_id` and `_score`.

    `collections` is served from `productCollections`; unknown names are simply absent.
    """
    names = DEFAULT_HIT_FIELDS if attributes is None else attributes
    hit: dict[str, Any] = {}
    for name in names:
        if name in ("_id", "_score"):
            continue
        if name == "collections":
            if "productCollections" in doc:
                hit["collections"] = doc["productCollections"]
        elif name in doc:
            hit[name] = doc[name]
    hit["_id"] = doc["_id"]
    if score is not None:
        hit["_score"] = score
    return hit
