"""/search and /reverse-image-search: request and response models.

The request models are the one place their parameters are declared: add a parameter as a
field here (or in a model of its own file under app/contract/, used as a field type), and
validation, the 400 messages and /openapi.json all follow.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from app.contract.common import (
    MARQO_IGNORED_KEYS,
    MAX_SEARCH_LIMIT,
    MAX_SEARCH_WINDOW,
    AttributeNames,
    ContractRequest,
    ContractResponse,
    FilterText,
    OnMissing,
    check_search_window,
    integral,
    omittable,
    reject,
    reject_nul,
    search_limit,
    search_offset,
)
from app.contract.multimodal import SearchMethod
from app.contract.storefront import CollapseField, FacetResult, Facets, SortBy, collapse_list

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tiff", ".avif")
_DATA_URL_RE = re.compile(r"data:image/[A-Za-z0-9.+-]+(?:;[A-Za-z0-9=._+-]+)*;base64,[A-Za-z0-9+/=\s]+", re.I)

Q_ERROR = "q must be an image URL or base64 data URI"

MAX_REVERSE_LIMIT = 10
# Text queries longer than this are refused: a megabyte of words overflows PostgreSQL's tsquery
# (a 500) or runs into the statement timeout, and no shopper types that much.
MAX_TEXT_QUERY_CHARS = 4096


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


# --- requests ------------------------------------------------------------------------------


class MarqoSearchRequest(ContractRequest):
    """A search request a Marqo client may send: its personalisation keys are accepted and ignored
    (Marqo falls back to its default configuration without them too)."""

    ignored_keys = MARQO_IGNORED_KEYS


def _search_q(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise reject("invalid_query", "q must be a string: text, an image URL or data URL, or '*' to browse")
    if value.strip() in ("", "*"):
        return None
    reject_nul(value, "q", "invalid_query")
    q = value.strip()
    if not is_image_query(q) and len(q) > MAX_TEXT_QUERY_CHARS:
        raise reject(
            "invalid_query",
            f"q: a text query may be at most {MAX_TEXT_QUERY_CHARS} characters "
            "(an image query must be an image URL or a data:image/...;base64, URL)",
        )
    return q


class SearchRequest(MarqoSearchRequest):
    """POST /search. `q` absent, empty or `*` browses."""

    empty_is = {}

    q: Annotated[
        str | None,
        BeforeValidator(_search_q),
        Field(
            description="text (ranked by searchMethod), an image URL or data URL (Search by Image), or `*` / absent to "
            f"browse; text at most {MAX_TEXT_QUERY_CHARS} characters",
        ),
    ] = None
    limit: Annotated[int, Field(ge=1, le=MAX_SEARCH_LIMIT), BeforeValidator(search_limit)] = 10
    offset: Annotated[
        int, Field(ge=0, description=f"limit + offset at most {MAX_SEARCH_WINDOW}"), BeforeValidator(search_offset)
    ] = 0
    filter: FilterText = None
    attributes: AttributeNames = omittable(alias="attributesToRetrieve")
    facets: Facets | None = omittable("counts over every product the query and filter match")
    sort_by: SortBy | None = omittable("at most 3 fields; relevance queries sort their top candidates", alias="sortBy")
    collapse_fields: Annotated[list[CollapseField] | None, BeforeValidator(collapse_list)] = omittable(
        "exactly one field: one hit per distinct value", alias="collapseFields"
    )

    @property
    def collapse(self) -> CollapseField | None:
        return self.collapse_fields[0] if self.collapse_fields else None
    search_method: SearchMethod = Field(default=None, alias="searchMethod")

    @model_validator(mode="after")
    def _window(self) -> SearchRequest:
        check_search_window(self.limit, self.offset)
        return self

    @property
    def is_image(self) -> bool:
        return self.q is not None and is_image_query(self.q)


def _image_q(value: Any) -> str:
    if not isinstance(value, str) or not is_image_query(value):
        raise reject("invalid_query", Q_ERROR)
    return value.strip()


def _clamped_limit(value: Any) -> int:
    return min(max(integral("limit")(value), 1), MAX_REVERSE_LIMIT)


def _flag(name: str) -> Any:
    """A boolean switch; anything else (1, "true") is a 400 naming it."""

    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise reject(f"invalid_{name}", f"{name} must be a boolean")
        return value

    return BeforeValidator(check)


class ReverseImageSearchRequest(MarqoSearchRequest):
    """POST /reverse-image-search: the seed contract (SPEC.md), exactly."""

    not_an_object = (Q_ERROR, "invalid_query")

    q: Annotated[
        str,
        BeforeValidator(_image_q),
        OnMissing("invalid_query", Q_ERROR),
        Field(
            description="an http(s) image URL whose path ends in "
            + " ".join(IMAGE_EXTENSIONS)
            + ", or a data:image/*;base64, URL",
        ),
    ]
    limit: Annotated[
        int, BeforeValidator(_clamped_limit), Field(description=f"clamped to 1-{MAX_REVERSE_LIMIT} (0 -> 1, 50 -> 10)")
    ] = 10
    filter: FilterText = None
    attributes: AttributeNames = omittable(alias="attributesToRetrieve")
    regions: Annotated[
        bool,
        _flag("regions"),
        Field(description="also return `regions`: each product found in a different part of the photo"),
    ] = False
    explain: Annotated[
        bool,
        _flag("explain"),
        Field(description="`_match` also carries the matched keypoint pairs (`pairs`, `catalogSize`)"),
    ] = False


# --- responses -----------------------------------------------------------------------------

# Strict union, exact member first: an integer stays an integer (5, not 5.0) when validated.
FieldValue = Annotated[
    str | bool | int | float | list[str],
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "number"},
                {"type": "boolean"},
                {"type": "array", "items": {"type": "string"}},
            ],
            "description": "a product field: string, number, boolean or array of strings",
        }
    ),
]


Box = Annotated[
    list[Annotated[int, Field(ge=0)]],
    Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] in the query photo's pixels (as sent, after EXIF "
          "orientation); left/top inclusive, right/bottom exclusive"),
]


class Match(ContractResponse):
    """Reverse image search only, on hits that geometric verification found: where in the query photo the
    product is, and how many distinct keypoints matched."""

    box: Box
    inliers: int = Field(ge=1)
    pairs: list[Annotated[list[float], Field(min_length=4, max_length=4)]] | None = omittable(
        "with `explain`: the inlier keypoint pairs, [query x, query y, catalog x, catalog y] (query photo pixels; "
        "pixels of the product's stored image)"
    )
    catalogSize: list[int] | None = omittable(
        "with `explain`: [width, height] of the product image the catalog points refer to",
        min_length=2,
        max_length=2,
    )


class Hit(ContractResponse):
    """The default fields (productTitle, variantTitle, price, variantImageUrl, collections) or those in
    attributesToRetrieve, plus `_id` and (when ranked) `_score`."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, FieldValue] = Field(init=False)  # type: ignore[assignment]

    id: str = Field(alias="_id")
    score: float | None = omittable("higher is more similar", alias="_score")
    productTitle: str | None = omittable()
    variantTitle: str | None = omittable()
    price: float | None = omittable()
    variantImageUrl: str | None = omittable()
    collections: list[str] | None = omittable("from productCollections")
    match: Match | None = omittable("reverse image search: where the product was found", alias="_match")


class SearchResponse(ContractResponse):
    hits: list[Hit]
    limit: int
    offset: int
    query: str
    processingTimeMs: int = Field(ge=0)
    facets: dict[str, FacetResult] | None = omittable("with `facets`: per facet field, in the order asked")


class SimilarResponse(ContractResponse):
    hits: list[Hit] = Field(max_length=100)
    limit: int = Field(ge=1, le=100)
    processingTimeMs: int = Field(ge=0)


class Region(ContractResponse):
    """One part of the photo and the products found there, best-first (`limit` of them)."""

    box: Box
    hits: list[Hit] = Field(max_length=MAX_REVERSE_LIMIT)


class ReverseImageSearchResponse(ContractResponse):
    hits: list[Hit] = Field(max_length=MAX_REVERSE_LIMIT)
    regions: list[Region] | None = omittable(
        "with `regions: true`: products found in different parts of the photo, best-first"
    )
    limit: int = Field(ge=1, le=MAX_REVERSE_LIMIT)
    processingTimeMs: int = Field(ge=0)


# The name the domain services use.
ReverseSearchRequest = ReverseImageSearchRequest
