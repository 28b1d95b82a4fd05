"""Multimodal search parameters: `searchMethod` (SPEC "Beyond the seed", `/search` parameters).

Declared here and used as a field type by app.contract.search.SearchRequest; the domain
decides the default and whether the index's model can honour it (app.domain.search).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from app.contract.common import reject

# How a text `q` is ranked.
SEARCH_METHODS = ("LEXICAL", "TENSOR", "HYBRID")


def _search_method(value: Any) -> str | None:
    if value is None:
        return None
    # Marqo's clients send these upper-case; any case is accepted.
    if not isinstance(value, str) or value.strip().upper() not in SEARCH_METHODS:
        raise reject(
            "invalid_search_method", f"searchMethod must be one of {', '.join(SEARCH_METHODS)}, got {value!r}"
        )
    return value.strip().upper()


SearchMethod = Annotated[
    Literal["LEXICAL", "TENSOR", "HYBRID"] | None,
    BeforeValidator(_search_method),
    Field(
        description="for text `q`: LEXICAL full-text; TENSOR the text embedding against the product image "
        "embeddings (filtered ANN, as Search by Image); HYBRID both fused by reciprocal rank (k = 60). "
        "Default HYBRID where the index's model has a text tower (open_clip), else LEXICAL; TENSOR/HYBRID on a "
        "model without one is a 400 `search_method_unsupported`",
    ),
]
