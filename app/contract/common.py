"""What every contract model shares: the base classes, the error mapping, reusable field types.

A model's fields are the contract: pydantic validates a request body against them, and the
same classes generate the JSON Schemas in /openapi.json (app.http.openapi). Every check that
has an exact SPEC message raises it through `reject(code, message)`; `ContractRequest.parse`
turns the first validation error into the SPEC error body `{"error", "code"}` (a 400).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from app.errors import ApiError, bad_request

# Error types raised by `reject` carry this prefix, so the mapping can tell them from pydantic's own.
_OWN = "lookalike."


def reject(code: str, message: str) -> PydanticCustomError:
    """A validation error whose SPEC `code` and exact `message` reach the client unchanged."""
    # The message goes through the context: a template would treat `{` in it as a placeholder.
    return PydanticCustomError(_OWN + code, "{message}", {"message": message})


def reject_nul(value: str, where: str, code: str) -> None:
    """Request text that reaches PostgreSQL (as bound text), which cannot hold a NUL character."""
    if "\x00" in value:
        raise reject(code, f"{where} must not contain NUL characters")


@dataclass(frozen=True)
class OnMissing:
    """Field metadata: the error a request gets when this required field is absent."""

    code: str
    message: str


def first_error(model: type[BaseModel], exc: ValidationError) -> ApiError:
    """The SPEC error for a failed validation: the first of our own checks that failed (fields are
    checked in declaration order; these carry the SPEC messages), else the first unknown key,
    else pydantic's first complaint, prefixed with where it is."""
    errors = exc.errors(include_url=False)
    own = [e for e in errors if e["type"].startswith(_OWN)]
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    error = (own or unknown or errors)[0]
    kind = error["type"]
    loc = [str(part) for part in error["loc"]]
    if kind.startswith(_OWN):
        return bad_request(error["msg"], kind.removeprefix(_OWN))
    if kind == "extra_forbidden" and len(loc) == 1:
        template = getattr(model, "unknown_parameter", ContractRequest.unknown_parameter)
        message = template.format(key=loc[0], known=", ".join(_aliases(model)))
        return bad_request(message, "unknown_parameter")
    if kind == "missing" and len(loc) == 1:
        field = _field_by_alias(model, loc[0])
        for meta in field.metadata if field is not None else ():
            if isinstance(meta, OnMissing):
                return bad_request(meta.message, meta.code)
        return bad_request(f"{loc[0]} is required", "invalid_request")
    where = ".".join(loc)
    return bad_request(f"{where}: {error['msg']}" if where else str(error["msg"]), "invalid_request")


def _aliases(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _field_by_alias(model: type[BaseModel], alias: str) -> Any:
    for name, info in model.model_fields.items():
        if (info.alias or name) == alias:
            return info
    return None


def _drop_null(schema: dict[str, Any]) -> None:
    """JSON Schema of a key that may be absent but, when present, not null."""
    variants = schema.get("anyOf")
    if isinstance(variants, list):
        kept = [v for v in variants if v != {"type": "null"}]
        del schema["anyOf"]
        if len(kept) == 1:
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
    if schema.get("default", 0) is None:
        del schema["default"]


def omittable(description: str | None = None, *, alias: str | None = None, **constraints: Any) -> Any:
    """A `Field` for an optional key: absent by default, never null in the published schema."""
    return Field(None, alias=alias, description=description, json_schema_extra=_drop_null, **constraints)


class ContractModel(BaseModel):
    """Strict (no silent coercion: "5" is not 5, true is not 1), aliases are the JSON names."""

    model_config = ConfigDict(strict=True, populate_by_name=True, frozen=True)


def _publish_ignored_keys(schema: dict[str, Any], model: type[Any]) -> None:
    for key in sorted(getattr(model, "ignored_keys", ())):
        schema.setdefault("properties", {})[key] = {"description": "accepted and ignored"}


class ContractRequest(ContractModel):
    """A request body. Unknown top-level keys are refused with `unknown_parameter`, except the
    keys a subclass lists in `ignored_keys` (accepted whatever their value and dropped, as Marqo
    does; the schema lists them too)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_publish_ignored_keys)

    ignored_keys: ClassVar[frozenset[str]] = frozenset()
    # The message for an unknown top-level key ({key}: the key, {known}: the declared names).
    unknown_parameter: ClassVar[str] = "unknown parameter {key!r}; known parameters: {known}"
    # The error for a body that is not a JSON object (or no body at all, when `empty_is` is None).
    not_an_object: ClassVar[tuple[str, str]] = ("request body must be a JSON object", "invalid_request")
    # What an absent body (or JSON null) means: None = refuse it as `not_an_object`, else this object.
    empty_is: ClassVar[dict[str, Any] | None] = None

    @classmethod
    def parse(cls, body: Any) -> Self:
        """The validated request, or the SPEC 400 for the first thing wrong with `body`."""
        if body is None and cls.empty_is is not None:
            body = dict(cls.empty_is)
        if not isinstance(body, dict):
            message, code = cls.not_an_object
            raise bad_request(message, code)
        if cls.ignored_keys:
            body = {k: v for k, v in body.items() if k not in cls.ignored_keys}
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise first_error(cls, exc) from None


# Keys Marqo clients send that the read endpoints accept and ignore (Marqo falls back to defaults too).
MARQO_IGNORED_KEYS = frozenset({"userId", "sessionId", "profileId"})


class ContractResponse(ContractModel):
    """A response body: the schema the OpenAPI document publishes for it."""


# --- reusable checks ---------------------------------------------------------------------------


def integral(name: str, code: str | None = None) -> Callable[[Any], int]:
    """An integer; an integral float (5.0) counts, a boolean or anything else does not."""
    error_code = code or f"invalid_{name}"

    def check(value: Any) -> int:
        if isinstance(value, bool):
            raise reject(error_code, f"{name} must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise reject(error_code, f"{name} must be an integer")

    return check


# Paging of /search and /collections: the same limits, checks and messages for both.
MAX_SEARCH_LIMIT = 1000
MAX_SEARCH_WINDOW = 10_000


def search_limit(value: Any) -> int:
    limit = integral("limit")(value)
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise reject("invalid_limit", f"limit must be between 1 and {MAX_SEARCH_LIMIT}")
    return limit


def search_offset(value: Any) -> int:
    offset = integral("offset")(value)
    if offset < 0:
        raise reject("invalid_offset", "offset must not be negative")
    return offset


def check_search_window(limit: int, offset: int) -> None:
    if limit + offset > MAX_SEARCH_WINDOW:
        raise reject("invalid_offset", f"limit + offset must not exceed {MAX_SEARCH_WINDOW}")


def string_list(message: str, code: str) -> Callable[[Any], list[str]]:
    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise reject(code, message)
        return value

    return check


def optional_string(message: str, code: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise reject(code, message)
        return value

    return check


FilterText = Annotated[
    str | None,
    BeforeValidator(optional_string("filter must be a string", "invalid_filter")),
    Field(description="filter DSL (FILTER_DSL.md), e.g. `brand:Nike AND price:[* TO 200]`; null = no filter"),
]

AttributeNames = Annotated[
    list[str] | None,
    BeforeValidator(string_list("attributesToRetrieve must be an array of strings", "invalid_attributes")),
    Field(description="which product fields each hit carries (plus `_id` and `_score`); unknown names are absent"),
]


class Error(ContractResponse):
    """Every error, on every endpoint."""

    error: str = Field(description="what a person reads")
    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="what a program branches on (stable snake_case)")
