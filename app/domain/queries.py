"""Parsing of /search and /reverse-image-search bodies, and hit shaping (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.contract.storefront import CollapseField, Facets, SortBy, parse_collapse
from app.errors import bad_request

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tiff", ".avif")
_DATA_URL_RE = re.compile(r"data:image/[A-Za-z0-9.+-]+(?:;[A-Za-z0-9=._+-]+)*;base64,[A-Za-z0-9+/=\s]+", re.I)

DEFAULT_HIT_FIELDS = ("productTitle", "variantTitle", "price", "variantImageUrl", "collections")

Q_ERROR = "q must be an image URL or base64 data URI"


def is_image_url(q: str) -> bool:
    """http(s) URL whose path ends in an accepted image extension (query string allowed)."""
    try:
        parts = urlsplit(q.strip())
    except ValueError:
        return False
    return (
        parts.scheme.lower() in ("http", "https")
        and bool(parts.hostname)
        and parts.path.lower().endswith(IMAGE_EXTENSIONS)
    )


def is_data_url(q: str) -> bool:
    return bool(_DATA_URL_RE.fullmatch(q.strip()))


def is_image_query(q: str) -> bool:
    return is_image_url(q) or is_data_url(q)


def _attributes(body: dict[str, Any]) -> list[str] | None:
    if "attributesToRetrieve" not in body:
        return None
    value = body["attributesToRetrieve"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("attributesToRetrieve must be an array of strings", "invalid_attributes")
    return value


def _filter(body: dict[str, Any]) -> str | None:
    value = body.get("filter")
    if value is not None and not isinstance(value, str):
        raise bad_request("filter must be a string", "invalid_filter")
    return value


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise bad_request(f"{name} must be an integer", f"invalid_{name}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise bad_request(f"{name} must be an integer", f"invalid_{name}")


@dataclass(frozen=True)
class ReverseSearchRequest:
    q: str
    limit: int
    filter: str | None
    attributes: list[str] | None


def parse_reverse_search(body: Any) -> ReverseSearchRequest:
    if not isinstance(body, dict):
        raise bad_request(Q_ERROR, "invalid_query")
    q = body.get("q")
    if not isinstance(q, str) or not is_image_query(q):
        raise bad_request(Q_ERROR, "invalid_query")
    limit = _integer(body.get("limit", 10), "limit")
    return ReverseSearchRequest(
        q=q.strip(),
        limit=min(max(limit, 1), 10),
        filter=_filter(body),
        attributes=_attributes(body),
    )


MAX_SEARCH_LIMIT = 1000
MAX_SEARCH_WINDOW = 10_000
# Text queries longer than this are refused: a megabyte of words overflows PostgreSQL's tsquery
# (a 500) or runs into the statement timeout, and no shopper types that much.
MAX_TEXT_QUERY_CHARS = 4096


@dataclass(frozen=True)
class SearchRequest:
    q: str | None  # None = browse
    is_image: bool
    limit: int
    offset: int
    filter: str | None
    attributes: list[str] | None
    facets: Facets | None = None
    sort_by: SortBy | None = None
    collapse: CollapseField | None = None


def parse_search(body: Any) -> SearchRequest:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    q = body.get("q")
    if q is not None and not isinstance(q, str):
        raise bad_request(
            "q must be a string: text, an image URL or data URL, or '*' to browse", "invalid_query"
        )
    if q is not None and (q.strip() in ("", "*")):
        q = None
    if q is not None and "\x00" in q:
        raise bad_request("q must not contain NUL characters", "invalid_query")
    limit = _integer(body.get("limit", 10), "limit")
    offset = _integer(body.get("offset", 0), "offset")
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise bad_request(f"limit must be between 1 and {MAX_SEARCH_LIMIT}", "invalid_limit")
    if offset < 0:
        raise bad_request("offset must not be negative", "invalid_offset")
    if limit + offset > MAX_SEARCH_WINDOW:
        raise bad_request(f"limit + offset must not exceed {MAX_SEARCH_WINDOW}", "invalid_offset")
    is_image = bool(q) and is_image_query(q or "")
    if q is not None and not is_image and len(q.strip()) > MAX_TEXT_QUERY_CHARS:
        raise bad_request(
            f"q: a text query may be at most {MAX_TEXT_QUERY_CHARS} characters "
            "(an image query must be an image URL or a data:image/...;base64, URL)",
            "invalid_query",
        )
    return SearchRequest(
        q=q.strip() if q else None,
        is_image=is_image,
        limit=limit,
        offset=offset,
        filter=_filter(body),
        attributes=_attributes(body),
        facets=None if body.get("facets") is None else Facets.parse(body["facets"]),
        sort_by=None if body.get("sortBy") is None else SortBy.parse(body["sortBy"]),
        collapse=parse_collapse(body.get("collapseFields")),
    )


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
