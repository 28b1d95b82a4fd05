"""Storefront parameters (SPEC "Beyond the seed"): facets, sortBy, collapseFields, and the
/collections and /recommendations/similar bodies, as pydantic v2 models.

Every problem is a 400 in the SPEC error shape with a stable code per parameter
(`invalid_facets`, `invalid_sort`, `invalid_collapse`, ...): each model turns pydantic's
own errors into one `lookalike.<code>` error carrying a message that names the place,
the same convention `app.contract`'s request models map to `{"error", "code"}`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from app.contract.common import (
    MARQO_IGNORED_KEYS,
    MAX_SEARCH_LIMIT,
    check_search_window,
    integral,
    optional_string,
    reject,
    reject_nul,
    search_limit,
    search_offset,
    string_list,
)
from app.errors import ApiError, bad_request

# `reject`'s error types carry this prefix (app.contract.common maps them to the SPEC body).
_OWN = "lookalike."

MAX_FACET_FIELDS = 32
MAX_FACET_RESULTS = 10_000
DEFAULT_FACET_RESULTS = 100
MAX_FACET_RANGES = 100
MAX_EXCLUDE_TERMS = 100
MAX_SORT_FIELDS = 3
MAX_SORT_DEPTH = 10_000
MAX_SIMILAR_IDS = 10
MAX_SIMILAR_LIMIT = 100


def _describe(exc: ValidationError, where: str) -> tuple[str | None, str]:
    """(own code or None, message) for the first error, its location prefixed by `where`."""
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    if kind.startswith(_OWN):
        return kind.removeprefix(_OWN), str(error["msg"])
    loc = ".".join(str(part) for part in (where, *error["loc"]) if part != "")
    message = str(error["msg"])
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "literal_error":
        message = f"must be {message.removeprefix('Input should be ')}"
    return None, f"{loc}: {message}"


class StorefrontModel(BaseModel):
    """Strict (5 is not "5", true is not 1), unknown keys refused, JSON names as aliases.

    `error_code` is the code of every problem inside the model, `where` its name in messages.
    """

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True, frozen=True)

    error_code: ClassVar[str] = "invalid_request"
    where: ClassVar[str] = ""

    @model_validator(mode="wrap")
    @classmethod
    def _own_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(data, dict) and not isinstance(data, cls):
            raise reject(cls.error_code, f"{cls.where} must be a JSON object")
        try:
            return handler(data)
        except ValidationError as exc:
            code, message = _describe(exc, cls.where)
            raise reject(code or cls.error_code, message) from None

    @classmethod
    def parse(cls, value: Any) -> Any:
        """The validated model, or the SPEC 400 (for callers outside a contract request model)."""
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            code, message = _describe(exc, cls.where)
            raise bad_request(message, code or cls.error_code) from None


def _finite(value: float | None, where: str, code: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise reject(code, f"{where} must be a finite number")
    return value


def _integer(value: Any, where: str, code: str, low: int, high: int) -> int:
    number = integral(where, code)(value)
    if not low <= number <= high:
        raise reject(code, f"{where} must be between {low} and {high}")
    return number


# --------------------------------------------------------------------------- facets


def _bound_text(value: float | None) -> str:
    if value is None:
        return "*"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


class FacetRange(StorefrontModel):
    """One bucket of a number facet: `from` inclusive, `to` exclusive, either may be absent."""

    error_code = "invalid_facets"
    where = "facets range"

    low: float | None = Field(None, alias="from", description="inclusive lower bound; absent = no lower bound")
    high: float | None = Field(None, alias="to", description="exclusive upper bound; absent = no upper bound")
    name: str | None = Field(None, description='the bucket\'s key in the response; default "from:to"')

    @model_validator(mode="after")
    def _bounds(self) -> FacetRange:
        if self.name is not None:
            reject_nul(self.name, "facets range name", "invalid_facets")
        _finite(self.low, "facets range from", "invalid_facets")
        _finite(self.high, "facets range to", "invalid_facets")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise reject("invalid_facets", f"facets range: from ({self.low}) must be less than to ({self.high})")
        return self

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"{_bound_text(self.low)}:{_bound_text(self.high)}"


def _ranges_overlap(a: FacetRange, b: FacetRange) -> bool:
    a_low, a_high = a.low if a.low is not None else -math.inf, a.high if a.high is not None else math.inf
    b_low, b_high = b.low if b.low is not None else -math.inf, b.high if b.high is not None else math.inf
    return a_low < b_high and b_low < a_high


class FacetField(StorefrontModel):
    """How one field is counted: `string` values, `array` elements, or `number` (ranges or stats)."""

    error_code = "invalid_facets"
    where = "facets field"

    type: Literal["string", "number", "array"]
    ranges: list[FacetRange] | None = Field(
        None, description="number facets only: buckets, non-overlapping; without ranges: min/max/avg/sum/count"
    )
    max_results: int | None = Field(None, alias="maxResults", description="most values returned (global default)")
    order: Literal["asc", "desc"] | None = Field(None, description="by count; ties by value (global default)")
    exclude_terms: list[str] | None = Field(
        None,
        alias="excludeTerms",
        description="filter terms (each must appear in `filter`) dropped from the filter when counting this facet",
    )

    @field_validator("max_results", mode="before")
    @classmethod
    def _max(cls, value: Any) -> Any:
        return None if value is None else _integer(value, "facets maxResults", "invalid_facets", 1, MAX_FACET_RESULTS)

    @model_validator(mode="after")
    def _consistent(self) -> FacetField:
        if self.ranges is not None:
            if self.type != "number":
                raise reject("invalid_facets", f"facets: ranges are only allowed on number facets, not {self.type}")
            if not 1 <= len(self.ranges) <= MAX_FACET_RANGES:
                raise reject("invalid_facets", f"facets: give 1 to {MAX_FACET_RANGES} ranges")
            labels = [r.label for r in self.ranges]
            if len(set(labels)) != len(labels):
                raise reject("invalid_facets", "facets: range names must be unique")
            for i, a in enumerate(self.ranges):
                for b in self.ranges[i + 1 :]:
                    if _ranges_overlap(a, b):
                        raise reject("invalid_facets", f"facets: ranges {a.label!r} and {b.label!r} overlap")
        for term in self.exclude_terms or ():
            reject_nul(term, "facets excludeTerms", "invalid_facets")
        if self.exclude_terms is not None and not 1 <= len(self.exclude_terms) <= MAX_EXCLUDE_TERMS:
            raise reject("invalid_facets", f"facets: excludeTerms takes 1 to {MAX_EXCLUDE_TERMS} terms")
        return self


class Facets(StorefrontModel):
    """`facets`: counts over every product the query and filter match (not the page)."""

    error_code = "invalid_facets"
    where = "facets"

    fields: dict[str, FacetField]
    max_results: int = Field(DEFAULT_FACET_RESULTS, alias="maxResults", description="default per facet")
    order: Literal["asc", "desc"] = Field("desc", description="default per facet: by count")

    @field_validator("max_results", mode="before")
    @classmethod
    def _max(cls, value: Any) -> Any:
        return _integer(value, "facets maxResults", "invalid_facets", 1, MAX_FACET_RESULTS)

    @field_validator("fields", mode="after")
    @classmethod
    def _count(cls, value: dict[str, FacetField]) -> dict[str, FacetField]:
        if not 1 <= len(value) <= MAX_FACET_FIELDS:
            raise reject("invalid_facets", f"facets.fields must name 1 to {MAX_FACET_FIELDS} fields")
        if any(name == "" for name in value):
            raise reject("invalid_facets", "facets.fields: a field name must not be empty")
        for name in value:
            reject_nul(name, "facets.fields: a field name", "invalid_facets")
        return value


# --------------------------------------------------------------------------- sorting


class SortField(StorefrontModel):
    error_code = "invalid_sort"
    where = "sortBy field"

    field_name: str = Field(alias="fieldName", min_length=1)
    order: Literal["asc", "desc"] = "asc"
    missing: Literal["first", "last"] = Field("last", description="where products without the field go")

    @field_validator("field_name", mode="after")
    @classmethod
    def _name(cls, value: str) -> str:
        reject_nul(value, "sortBy fieldName", "invalid_sort")
        return value


class SortBy(StorefrontModel):
    """`sortBy`: at most 3 fields; relevance queries sort their top candidates (see sortDepth)."""

    error_code = "invalid_sort"
    where = "sortBy"

    fields: list[SortField] = Field(min_length=1, max_length=MAX_SORT_FIELDS)
    sort_depth: int | None = Field(
        None, alias="sortDepth", description="relevance queries: how many top candidates are sorted"
    )
    min_sort_candidates: int | None = Field(
        None, alias="minSortCandidates", description="relevance queries: sort at least this many candidates"
    )

    @field_validator("sort_depth", "min_sort_candidates", mode="before")
    @classmethod
    def _depth(cls, value: Any) -> Any:
        return None if value is None else _integer(value, "sortBy depth", "invalid_sort", 1, MAX_SORT_DEPTH)


class CollapseField(StorefrontModel):
    """One hit per distinct value of `name`: the best-scoring one, or the first by `sortBy`."""

    error_code = "invalid_collapse"
    where = "collapseFields item"

    name: str = Field(min_length=1)
    sort_by: SortBy | None = Field(None, alias="sortBy")

    @field_validator("name", mode="after")
    @classmethod
    def _name(cls, value: str) -> str:
        reject_nul(value, "collapseFields name", "invalid_collapse")
        return value


def collapse_list(value: Any) -> Any:
    """`collapseFields` must be a list of exactly one field (its item is validated as CollapseField)."""
    if value is not None and (not isinstance(value, list) or len(value) != 1):
        raise reject("invalid_collapse", "collapseFields must be a list of exactly one field")
    return value


# --------------------------------------------------------------------------- responses


class ValueCount(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    count: int = Field(ge=0)


class NumberStats(BaseModel):
    """A number facet without ranges (null min/max/avg/sum when no product has a number there)."""

    model_config = ConfigDict(strict=True, frozen=True)

    min: float | None
    max: float | None
    avg: float | None
    sum: float | None
    count: int = Field(ge=0)


FacetResult = Annotated[
    dict[str, ValueCount] | NumberStats,
    Field(description="value (or range name) -> {count}, or number stats"),
]


# ------------------------------------------------------------------ endpoints' bodies

_Limit = Annotated[int, Field(description=f"1-{MAX_SEARCH_LIMIT}")]

_check_filter = optional_string("filter must be a string", "invalid_filter")
_check_attributes = string_list("attributesToRetrieve must be an array of strings", "invalid_attributes")


def _known_keys(model: type[BaseModel], data: Any) -> dict[str, Any]:
    """The body as an object without the ignored keys; an unknown key is a 400 naming it."""
    if not isinstance(data, dict):
        raise reject("invalid_request", "request body must be a JSON object")
    data = {k: v for k, v in data.items() if k not in MARQO_IGNORED_KEYS}
    unknown = sorted(set(data) - {info.alias or name for name, info in model.model_fields.items()})
    if unknown:
        raise reject("unknown_parameter", f"unknown parameter {unknown[0]!r}")
    return data


def _check_filter_and_attributes(data: dict[str, Any]) -> None:
    """The checks /search makes of these keys, with its messages and codes."""
    _check_filter(data.get("filter"))
    if "attributesToRetrieve" in data:
        _check_attributes(data["attributesToRetrieve"])


class CollectionsRequest(StorefrontModel):
    """POST /collections (and GET /collections?body=<base64 of this JSON>)."""

    error_code = "invalid_request"
    where = ""

    collection_name: str = Field(alias="collectionName", min_length=1)
    limit: _Limit = 10
    offset: int = 0
    filter: str | None = None
    attributes: list[str] | None = Field(None, alias="attributesToRetrieve")
    facets: Facets | None = None
    sort_by: SortBy | None = Field(None, alias="sortBy")

    @model_validator(mode="before")
    @classmethod
    def _codes(cls, data: Any) -> Any:
        # The SPEC codes of the keys shared with /search, before pydantic's generic ones.
        data = _known_keys(cls, data)
        name = data.get("collectionName")
        if not isinstance(name, str) or not name:
            raise reject("invalid_collection", "collectionName must be a non-empty string")
        # limit and offset: /search's checks and messages (app.contract.common)
        if "limit" in data:
            data["limit"] = search_limit(data["limit"])
        if "offset" in data:
            data["offset"] = search_offset(data["offset"])
        check_search_window(data.get("limit", 10), data.get("offset", 0))
        _check_filter_and_attributes(data)
        return data


class SimilarRequest(StorefrontModel):
    """POST /recommendations/similar: products that look like the given ones (stored vectors)."""

    error_code = "invalid_request"
    where = ""

    document_ids: list[str] = Field(alias="documentIds")
    limit: int = 10
    filter: str | None = None
    attributes: list[str] | None = Field(None, alias="attributesToRetrieve")

    @model_validator(mode="before")
    @classmethod
    def _codes(cls, data: Any) -> Any:
        data = _known_keys(cls, data)
        ids = data.get("documentIds")
        if (
            not isinstance(ids, list)
            or not 1 <= len(ids) <= MAX_SIMILAR_IDS
            or not all(isinstance(i, str) and i for i in ids)
        ):
            raise reject(
                "invalid_document_ids", f"documentIds must be an array of 1 to {MAX_SIMILAR_IDS} non-empty strings"
            )
        if "limit" in data:
            data["limit"] = _integer(data["limit"], "limit", "invalid_limit", 1, MAX_SIMILAR_LIMIT)
        _check_filter_and_attributes(data)
        return data


def parse_body(model: type[StorefrontModel], body: Any) -> Any:
    """A whole request body validated by `model`, or the SPEC 400."""
    if body is None:
        body = {}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        code, message = _describe(exc, "")
        raise bad_request(message, code or model.error_code) from None


__all__ = [
    "ApiError",
    "CollapseField",
    "CollectionsRequest",
    "FacetField",
    "FacetRange",
    "Facets",
    "SimilarRequest",
    "SortBy",
    "SortField",
    "collapse_list",
    "parse_body",
]
