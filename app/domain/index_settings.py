"""Index settings: validation of create/patch bodies and the stored settings document."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app.domain.rerank import DEFAULT_PARAMS
from app.errors import bad_request

INDEX_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

VECTOR_TYPES = ("halfvec", "vector")

# Reverse image search tuning knobs: (default, minimum, maximum). Defaults are the
# re-ranking defaults measured by benchmarks/offline_eval.py.
REVERSE_SEARCH_KNOBS: dict[str, tuple[int | str, int, int]] = {
    "candidatePool": (DEFAULT_PARAMS.pool_size, 10, 1000),
    # "auto": as many crops as the model's measured speed allows (rerank.crops_for_model)
    "queryCrops": ("auto", 1, 8),
}
AUTO_KNOBS = {"queryCrops"}


def validate_index_name(name: str) -> str:
    if not INDEX_NAME_RE.fullmatch(name):
        raise bad_request(
            "index name must match [a-z0-9][a-z0-9_-]{0,62}: lower-case letters, digits, '_' and '-', "
            "starting with a letter or digit, at most 63 characters",
            "invalid_index_name",
        )
    return name


def default_reverse_search() -> dict[str, Any]:
    knobs: dict[str, Any] = {name: spec[0] for name, spec in REVERSE_SEARCH_KNOBS.items()}
    return {"enabled": False, **knobs}


def validate_reverse_search(value: Any, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge a `reverseImageSearch` object onto the current (or default) one, checking each knob."""
    if not isinstance(value, dict):
        raise bad_request('reverseImageSearch must be an object, e.g. {"enabled": true}', "invalid_settings")
    merged = dict(current or default_reverse_search())
    for key, item in value.items():
        if key == "enabled":
            if not isinstance(item, bool):
                raise bad_request("reverseImageSearch.enabled must be true or false", "invalid_settings")
            merged["enabled"] = item
        elif key in REVERSE_SEARCH_KNOBS:
            _, low, high = REVERSE_SEARCH_KNOBS[key]
            auto_ok = key in AUTO_KNOBS and item == "auto"
            if not auto_ok and (isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high):
                also = ' or "auto"' if key in AUTO_KNOBS else ""
                raise bad_request(
                    f"reverseImageSearch.{key} must be an integer from {low} to {high}{also}", "invalid_settings"
                )
            merged[key] = item
        else:
            known = ", ".join(["enabled", *REVERSE_SEARCH_KNOBS])
            raise bad_request(
                f"unknown reverseImageSearch setting {key!r}; known settings: {known}", "invalid_settings"
            )
    return merged


@dataclass(frozen=True)
class IndexCreateRequest:
    model: Any
    vector_type: str
    reverse_search: dict[str, Any]


def parse_create_body(body: Any) -> IndexCreateRequest:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", "invalid_request")
    unknown = set(body) - {"model", "vectorType", "reverseImageSearch"}
    if unknown:
        raise bad_request(
            f"unknown index setting(s): {', '.join(sorted(unknown))}; "
            "known settings: model, vectorType, reverseImageSearch",
            "invalid_settings",
        )
    vector_type = body.get("vectorType", "halfvec")
    if vector_type not in VECTOR_TYPES:
        raise bad_request("vectorType must be 'halfvec' or 'vector'", "invalid_settings")
    reverse = validate_reverse_search(body.get("reverseImageSearch", {}))
    return IndexCreateRequest(model=body.get("model"), vector_type=vector_type, reverse_search=reverse)


def parse_patch_body(body: Any, current: dict[str, Any]) -> dict[str, Any]:
    """The new settings document; only `reverseImageSearch` may change after creation."""
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", "invalid_request")
    for fixed in ("model", "vectorType"):
        if fixed in body and body[fixed] != current.get(fixed):
            raise bad_request(
                f"{fixed} cannot be changed after an index is created; create a new index and re-add products",
                "invalid_settings",
            )
    unknown = set(body) - {"model", "vectorType", "reverseImageSearch"}
    if unknown:
        raise bad_request(
            f"unknown or read-only setting(s): {', '.join(sorted(unknown))}; "
            "only reverseImageSearch can be changed",
            "invalid_settings",
        )
    updated = dict(current)
    if "reverseImageSearch" in body:
        updated["reverseImageSearch"] = validate_reverse_search(
            body["reverseImageSearch"], current.get("reverseImageSearch")
        )
    return updated
