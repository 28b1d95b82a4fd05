"""Index settings: the stored settings document, built from the validated requests of
app.contract.indexes (create) and merged for changes (patch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.contract.indexes import (
    INDEX_NAME_RE,
    REVERSE_SEARCH_KNOB_RANGES,
    CreateIndexRequest,
    ReverseImageSearchSettings,
    SettingsPatch,
)
from app.domain.rerank import DEFAULT_PARAMS
from app.errors import bad_request

# Defaults of the reverse image search knobs (their ranges are the contract's): the re-ranking
# defaults measured by benchmarks/offline_eval.py.
_KNOB_DEFAULTS: dict[str, int | str] = {
    "candidatePool": DEFAULT_PARAMS.pool_size,
    # "auto": as many crops as the model's measured speed allows (rerank.crops_for_model)
    "queryCrops": "auto",
    # 0: verify all verifyTop; N: stop once the first N hits provably cannot change (rerank.verification_settled)
    "verifySettle": DEFAULT_PARAMS.settle_top,
    # candidates the colour descriptors add per query crop box (0: colour only scores the pool)
    "colourPool": DEFAULT_PARAMS.colour_pool,
}


def validate_index_name(name: str) -> str:
    if not INDEX_NAME_RE.fullmatch(name):
        raise bad_request(
            "index name must match [a-z0-9][a-z0-9_-]{0,62}: lower-case letters, digits, '_' and '-', "
            "starting with a letter or digit, at most 63 characters",
            "invalid_index_name",
        )
    return name


def default_reverse_search() -> dict[str, Any]:
    return {"enabled": False, **{name: _KNOB_DEFAULTS[name] for name in REVERSE_SEARCH_KNOB_RANGES}}


@dataclass(frozen=True)
class IndexCreateRequest:
    model: Any
    vector_type: str
    reverse_search: dict[str, Any]


def parse_create_body(body: Any) -> IndexCreateRequest:
    request = CreateIndexRequest.parse(body)
    reverse = {**default_reverse_search(), **request.reverseImageSearch.changes()}
    return IndexCreateRequest(model=request.model, vector_type=request.vectorType, reverse_search=reverse)


def parse_patch_body(body: Any, current: dict[str, Any]) -> dict[str, Any]:
    """The new settings document; only `reverseImageSearch` may change after creation."""
    patch = SettingsPatch.parse(body)
    for fixed in ("model", "vectorType"):
        if fixed in patch.model_fields_set and getattr(patch, fixed) != current.get(fixed):
            raise bad_request(
                f"{fixed} cannot be changed after an index is created; create a new index and re-add products",
                "invalid_settings",
            )
    updated = dict(current)
    if "reverseImageSearch" in patch.model_fields_set:
        reverse: ReverseImageSearchSettings = patch.reverseImageSearch
        updated["reverseImageSearch"] = {
            **(current.get("reverseImageSearch") or default_reverse_search()),
            **reverse.changes(),
        }
    return updated
