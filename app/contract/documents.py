"""Products and the document endpoints: add/replace, partial update, get, delete.

A batch is validated as a whole (its shape and size); each product in it is validated on
its own (`Product.check_item`), so a bad product fails alone with its own message and the
batch still answers 200. The per-call limits are settings: `documents_request(n)` and
`get_documents_request(n)` build the request model for a configured limit (cached), and the
same class generates the schema, so /openapi.json shows the configured maxItems.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, SkipValidation, ValidationError, create_model, model_validator

from app.contract.common import ContractModel, ContractRequest, ContractResponse, OnMissing, omittable, reject
from app.contract.search import FieldValue

MAX_ID_LENGTH = 512
MAX_FIELD_NAME_LENGTH = 256
MAX_STRING_LENGTH = 100_000
MAX_FIELDS = 256
MAX_ARRAY_ITEMS = 1024
MAX_DELETE_IDS = 10_000

_DATA_URL_RE = re.compile(r"data:image/[A-Za-z0-9.+-]+(;[A-Za-z0-9=._+-]+)*;base64,", re.IGNORECASE)


class DocumentError(ValueError):
    """A product document that cannot be stored; the message says what to fix."""


def is_image_reference(value: str) -> bool:
    """http(s) URL or a base64 `data:image/*` URL (syntax only; fetching checks the rest)."""
    lowered = value[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return len(value) > len("https://")
    return bool(_DATA_URL_RE.match(value))


def document_id(raw: Any) -> str | None:
    """The `_id` of a raw item if it has a usable one (for per-item error reports)."""
    if isinstance(raw, dict) and isinstance(raw.get("_id"), str):
        return raw["_id"]
    return None


# --- per-field checks (messages are part of the contract: tests assert them) -------------------


def _check_text(field: str, value: str) -> None:
    if "\x00" in value:
        raise DocumentError(f"field {field!r} contains a NUL character, which cannot be stored")
    # An image may come inline as a data URL: its size is bounded by the request body limit
    # and the fetcher's byte cap, not by the text-field limit.
    if field == "variantImageUrl" and value[:5].lower() == "data:":
        return
    if len(value) > MAX_STRING_LENGTH:
        raise DocumentError(f"field {field!r} is longer than {MAX_STRING_LENGTH} characters")


def _check_field_name(name: str) -> None:
    if not name:
        raise DocumentError("field names must not be empty")
    if len(name) > MAX_FIELD_NAME_LENGTH:
        raise DocumentError(f"field name {name[:40]!r}... is longer than {MAX_FIELD_NAME_LENGTH} characters")
    if "\x00" in name:
        raise DocumentError("field names must not contain NUL characters")
    if name.startswith("_") and name != "_id":
        raise DocumentError(f"field {name!r}: names starting with '_' are reserved")


def check_id(value: Any) -> str:
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


def _item_error(message: str) -> Any:
    return reject("invalid_document", message)


def _core_string(name: str) -> BeforeValidator:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _item_error(f"{name} must be a string")
        return value

    return BeforeValidator(check)


def _title(value: Any) -> str:
    if not isinstance(value, str):
        raise _item_error("productTitle must be a string")
    if not value.strip():
        raise _item_error("productTitle must not be empty")
    return value


def _image(value: Any) -> str:
    if not isinstance(value, str):
        raise _item_error("variantImageUrl must be a string")
    if not is_image_reference(value):
        raise _item_error("variantImageUrl must be an http(s) URL or a data:image/...;base64, URL")
    return value


def _price(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _item_error("price must be a number")
    return value


def _collections(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _item_error("productCollections must be an array of strings")
    return value


# --- products ---------------------------------------------------------------------------------


class Product(ContractModel):
    """A product; custom fields may be strings, numbers, booleans or arrays of strings (no nested
    objects). `collections` is accepted as an alias of `productCollections` and stored as the latter."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, FieldValue] = Field(init=False)  # type: ignore[assignment]

    id: Annotated[str, Field(alias="_id", min_length=1, max_length=MAX_ID_LENGTH)]
    productTitle: Annotated[str, BeforeValidator(_title), Field(min_length=1)]
    variantImageUrl: Annotated[
        str, BeforeValidator(_image), Field(description="http(s) URL or data:image/*;base64, URL")
    ]
    price: Annotated[int | float, BeforeValidator(_price)]
    variantTitle: Annotated[str | None, _core_string("variantTitle")] = omittable()
    description: Annotated[str | None, _core_string("description")] = omittable()
    parentProductId: Annotated[str | None, _core_string("parentProductId")] = omittable()
    productCollections: Annotated[list[str] | None, BeforeValidator(_collections)] = omittable()
    collections: list[str] | None = omittable("alias of productCollections")

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, raw: Any) -> Any:
        """Field names and values in general: NUL, size, null, nesting; the alias folded in."""
        try:
            return normalise(raw)
        except DocumentError as exc:
            raise _item_error(str(exc)) from None

    @classmethod
    def check_item(cls, raw: Any) -> dict[str, Any]:
        """One product of a batch, normalised for storage; DocumentError says what is wrong with it."""
        try:
            product = cls.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            if error["type"] == "missing":
                raise DocumentError(f"{error['loc'][0]} is required") from None
            raise DocumentError(str(error["msg"])) from None
        return product.document()

    def document(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_unset=True)


def normalise(raw: Any) -> dict[str, Any]:
    """Field names and values checked one by one (NUL, sizes, null, nesting); `collections` folded
    into `productCollections`. Typed fields are checked by the model after this."""
    if not isinstance(raw, dict):
        raise DocumentError("each document must be a JSON object")
    if len(raw) > MAX_FIELDS:
        raise DocumentError(f"a document may have at most {MAX_FIELDS} fields")
    doc: dict[str, Any] = {"_id": check_id(raw.get("_id"))}
    if "collections" in raw and "productCollections" in raw:
        raise DocumentError("give either productCollections or its alias collections, not both")
    for name, value in raw.items():
        if name == "_id":
            continue
        _check_field_name(name)
        target = "productCollections" if name == "collections" else name
        doc[target] = _normalise_value(name, value)
    return doc


class ProductPatch(ContractModel):
    """A partial update: only `_id` is required; the merged product must be valid as a whole."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, FieldValue] = Field(init=False)  # type: ignore[assignment]

    id: str = Field(alias="_id", min_length=1, max_length=MAX_ID_LENGTH)


# --- batches ----------------------------------------------------------------------------------


def _batch(limit: int) -> BeforeValidator:
    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise reject("invalid_documents", 'body must be {"documents": [ ... ]}')
        if not value:
            raise reject("invalid_documents", "documents must not be empty")
        if len(value) > limit:
            raise reject(
                "too_many_documents", f"at most {limit} documents per call (got {len(value)}); split the batch"
            )
        return value

    return BeforeValidator(check)


_NOT_A_BATCH = OnMissing("invalid_documents", 'body must be {"documents": [ ... ]}')


class AddDocumentsRequest(ContractRequest):
    """POST /documents: add or replace products. Each product is checked on its own: a bad one fails
    alone (its item carries the status and message) and the batch still answers 200."""

    documents: list[Any]


class UpdateDocumentsRequest(ContractRequest):
    """PATCH /documents: partial updates; each is merged onto the stored product and checked whole."""

    documents: list[Any]


@functools.cache
def documents_request(kind: Literal["add", "update"], max_documents: int) -> type[ContractRequest]:
    """The add or update request model for a configured `max_documents_per_call`."""
    base, item = (AddDocumentsRequest, Product) if kind == "add" else (UpdateDocumentsRequest, ProductPatch)
    batch = Annotated[
        SkipValidation[Annotated[list[item], Field(min_length=1, max_length=max_documents)]],  # type: ignore[valid-type]
        _batch(max_documents),
        _NOT_A_BATCH,
    ]
    return create_model(base.__name__, __base__=base, __doc__=base.__doc__, documents=(batch, ...))


def _id_list(name: str, limit: int) -> BeforeValidator:
    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise reject("invalid_request", f"{name} must be an array of strings")
        if len(value) > limit:
            raise reject("invalid_request", f"{name} may hold at most {limit} ids")
        return value

    return BeforeValidator(check)


class GetDocumentsRequest(ContractRequest):
    """POST /get-documents."""

    documentIds: list[str]


@functools.cache
def get_documents_request(max_ids: int) -> type[GetDocumentsRequest]:
    """The get-documents request model for a configured `max_get_documents`."""
    ids = Annotated[
        list[str],
        _id_list("documentIds", max_ids),
        OnMissing("invalid_request", "documentIds must be an array of strings"),
        Field(max_length=max_ids),
    ]
    return create_model(
        "GetDocumentsRequest", __base__=GetDocumentsRequest, __doc__=GetDocumentsRequest.__doc__, documentIds=(ids, ...)
    )


class DeleteDocumentsRequest(ContractRequest):
    """DELETE /documents."""

    ids: Annotated[
        list[str],
        _id_list("ids", MAX_DELETE_IDS),
        OnMissing("invalid_request", "ids must be an array of strings"),
        Field(max_length=MAX_DELETE_IDS),
    ]


# --- responses --------------------------------------------------------------------------------


class ItemStatus(ContractResponse):
    id: str | None = Field(alias="_id")
    status: int = Field(ge=100, le=599)
    message: str | None = omittable("why the item failed")


class DocumentsResponse(ContractResponse):
    errors: bool = Field(description="true when any item failed")
    items: list[ItemStatus]
    processingTimeMs: int = Field(ge=0)


class EmbeddingState(ContractResponse):
    """Queue mode: why a stored product is not searchable yet."""

    status: Literal["pending", "failed"] = Field(
        description="`pending`: waiting for a `lookalike worker`; `failed`: its image could not be embedded"
    )
    message: str


class FoundDocument(ContractResponse):
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, FieldValue] = Field(init=False)  # type: ignore[assignment]

    id: str = Field(alias="_id")
    found: Literal[True] = Field(alias="_found")
    embedding: EmbeddingState | None = omittable(
        "only on a product not searchable yet (LOOKALIKE_INGEST_MODE=queue)", alias="_embedding"
    )


class MissingDocument(ContractResponse):
    id: str = Field(alias="_id")
    found: Literal[False] = Field(alias="_found")
    message: str


class GetDocumentsResponse(ContractResponse):
    results: list[FoundDocument | MissingDocument] = Field(description="one result per requested id, in order")


class DeleteDetails(ContractResponse):
    deletedDocuments: int = Field(ge=0)
    receivedDocumentIds: int = Field(ge=0)


class DeleteItem(ContractResponse):
    id: str = Field(alias="_id")
    result: Literal["deleted", "not_found"]
    status: Literal[200, 404]


class DeleteDocumentsResponse(ContractResponse):
    details: DeleteDetails
    items: list[DeleteItem]
