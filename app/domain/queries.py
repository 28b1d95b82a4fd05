"""Search requests (declared in app.contract.search) and hit shaping (pure)."""

from __future__ import annotations

from typing import Any

from app.contract.search import (
    IMAGE_EXTENSIONS,
    MAX_SEARCH_LIMIT,
    MAX_SEARCH_WINDOW,
    MAX_TEXT_QUERY_CHARS,
    Q_ERROR,
    ReverseSearchRequest,
    SearchRequest,
    is_data_url,
    is_image_query,
    is_image_url,
)

__all__ = [
    "DEFAULT_HIT_FIELDS",
    "IMAGE_EXTENSIONS",
    "MAX_SEARCH_LIMIT",
    "MAX_SEARCH_WINDOW",
    "MAX_TEXT_QUERY_CHARS",
    "Q_ERROR",
    "ReverseSearchRequest",
    "SearchRequest",
    "is_data_url",
    "is_image_query",
    "is_image_url",
    "parse_reverse_search",
    "parse_search",
    "shape_hit",
]

DEFAULT_HIT_FIELDS = ("productTitle", "variantTitle", "price", "variantImageUrl", "collections")


def parse_reverse_search(body: Any) -> ReverseSearchRequest:
    return ReverseSearchRequest.parse(body)


def parse_search(body: Any) -> SearchRequest:
    return SearchRequest.parse(body)


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
