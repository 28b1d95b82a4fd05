"""Product documents: validation and normalisation (pure; no I/O)."""

from __future__ import annotations

import math
import re
from typing import Any

CORE_STRING_FIELDS = ("productTitle", "variantTitle", "description", "parentProductId", "variantImageUrl")
REQUIRED_FIELDS = ("_id", "productTitle", "variantImageUrl", "price")
MAX_ID_LENGTH = 512
MAX_FIELD_NAME_LENGTH = 256
MAX_STRING_LENGTH = 100_000
MAX_FIELDS = 256
MAX_ARRAY_ITEMS = 1024

_DATA_URL_RE = re.compile(r"data:image/[A-Za-z0-9.+-]+(;[A-Za-z0-9=._+-]+)*;base64,", re.IGNORECASE)


class DocumentError(ValueError):
    """A product document that cannot be stored; the message says what to fix."""


def _check_text(field: str, value: str) -> None:
    if "\x00" in value:
        raise DocumentError(f"field {field!r} contains a NUL character, which cannot be stored")
    # An image may come inline as a data URL: its size is bounded by the request body limit
    # and the fetcher's byte cap, not by the text-field limit.
    if field == "variantImageUrl" and value[:5].lower() == "data:":
        return
    if len(value) > MAX_STRING_LENGTH:
        raise DocumentError(f"field {field!r} is longer than {MAX_STRING_LENGTH} characters")


def is_image_reference(value: str) -> bool:
    """http(s) URL or a base64 `data:image/*` URL (syntax only; fetching checks the rest)."""
    lowered = value[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return len(value) > len("https://")
    return bool(_DATA_URL_RE.match(value))


def _check_field_name(name: str) -> None:
    if not name:
        raise DocumentError("field names must not be empty")
    if len(name) > MAX_FIELD_NAME_LENGTH:
        raise DocumentError(f"field name {name[:40]!r}... is longer than {MAX_FIELD_NAME_LENGTH} characters")
    if "\x00" in name:
        raise DocumentError("field names must not contain NUL characters")
    if name.startswith("_") and name != "_id":
        raise DocumentError(f"field {name!r}: names starting with '_' are reserved")


def document_id(raw: Any) -> str | None:
    """The `_id` of a raw item if it has a usable one (for per-item error reports)."""
    if isinstance(raw, dict) and isinstance(raw.get("_id"), str):
        return raw["_id"]
    return None


def _check_id(value: Any) -> str:
    if value is None:
        raise DocumentError("_id is required")
    if not isinstance(value, str):
        raise DocumentError("_id must be a string")
    if not value or len(value) > MAX_ID_LENGTH:
        raise DocumentError(f"_id must be 1 to {MAX_ID_LENGTH} characters")
    if "\x00" in value:
        raise DocumentError("_id must not contain NUL characters")
    return value


def _normalise_value(name: str, value: Any) -> Any:
    if value is None:
        raise DocumentError(f"field {name!r} is null; omit the field instead")
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise DocumentError(f"field {name!r} must be a finite number")
        return value
    if isinstance(value, str):
        _check_text(name, value)
        return value
    if isinstance(value, list):
        if len(value) > MAX_ARRAY_ITEMS:
            raise DocumentError(f"field {name!r} has more than {MAX_ARRAY_ITEMS} items")
        for item in value:
            if not isinstance(item, str):
                raise DocumentError(f"field {name!r} must be an array of strings")
            _check_text(name, item)
        return list(value)
    if isinstance(value, dict):
        raise DocumentError(
            f"field {name!r} is a nested object; nested objects are not supported — "
            "flatten it into top-level fields"
        )
    raise DocumentError(f"field {name!r} has an unsupported type")


def validate_document(raw: Any) -> dict[str, Any]:
    """A complete product document (add/replace), normalised for storage.

    `collections` is accepted as an alias of `productCollections` and stored under the latter.
    """
    if not isinstance(raw, dict):
        raise DocumentError("each document must be a JSON object")
    if len(raw) > MAX_FIELDS:
        raise DocumentError(f"a document may have at most {MAX_FIELDS} fields")
    doc: dict[str, Any] = {"_id": _check_id(raw.get("_id"))}
    if "collections" in raw and "productCollections" in raw:
        raise DocumentError("give either productCollections or its alias collections, not both")
    for name, value in raw.items():
        if name == "_id":
            continue
        _check_field_name(name)
        target = "productCollections" if name == "collections" else name
        doc[target] = _normalise_value(name, value)
    for name in REQUIRED_FIELDS:
        if name not in doc:
            raise DocumentError(f"{name} is required")
    for name in CORE_STRING_FIELDS:
        if name in doc and not isinstance(doc[name], str):
            raise DocumentError(f"{name} must be a string")
    if not doc["productTitle"].strip():
        raise DocumentError("productTitle must not be empty")
    price = doc["price"]
    if isinstance(price, bool) or not isinstance(price, int | float):
        raise DocumentError("price must be a number")
    if "productCollections" in doc and not isinstance(doc["productCollections"], list):
        raise DocumentError("productCollections must be an array of strings")
    if not is_image_reference(doc["variantImageUrl"]):
        raise DocumentError("variantImageUrl must be an http(s) URL or a data:image/...;base64, URL")
    return doc


def merge_partial(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply a partial update (only `_id` required) and validate the result as a whole document."""
    if not isinstance(patch, dict):
        raise DocumentError("each document must be a JSON object")
    _check_id(patch.get("_id"))
    merged = dict(current)
    for name, value in patch.items():
        if name == "collections":
            merged.pop("productCollections", None)
            merged["productCollections"] = value
        else:
            merged[name] = value
    return validate_document(merged)
