"""The OpenAPI 3.1 description of every endpoint, served at /openapi.json, GENERATED.

The schemas are the JSON Schemas of the contract models (app/contract), so what the service
validates and what it publishes cannot drift; the table below only says which model each
operation takes and answers, its credentials and its error statuses. The limits that are
settings (documents per call, ids per get-documents, body size) come from the app's
Settings. The test suite validates every response its `api` client receives against this
document (tests/conftest.py) and fuzzes the service from it (tests/test_fuzz_api.py).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse

from app.config import Settings
from app.contract.calibrate import CALIBRATION_STREAM_LINES, NDJSON, CalibrateRequest, CalibrationReport
from app.contract.common import Error
from app.contract.documents import (
    DeleteDocumentsRequest,
    DeleteDocumentsResponse,
    DocumentsResponse,
    GetDocumentsResponse,
    documents_request,
    get_documents_request,
)
from app.contract.indexes import (
    INDEX_NAME_PATTERN,
    CreateIndexRequest,
    CreateIndexResponse,
    DeleteIndexResponse,
    IndexDescription,
    IndexList,
    IndexSettings,
    IndexStats,
    SettingsPatch,
)
from app.contract.ops import Health, HealthUnavailable
from app.contract.search import (
    ReverseImageSearchRequest,
    ReverseImageSearchResponse,
    SearchRequest,
    SearchResponse,
    SimilarResponse,
)
from app.contract.storefront import CollectionsRequest, SimilarRequest

JSON = "application/json"
_REF = "#/components/schemas/{model}"
_BASE = "/api/v1/indexes/{index_name}"
_ADMIN = [{"adminKey": []}]
_READ = [{"indexId": []}, {"adminKey": []}]
_ADMIN_401 = "missing or wrong admin key"
_READ_401 = "missing or wrong x-marqo-index-id"
_UNKNOWN = "unknown index"
_UNKNOWN_READ = "unknown index (admin) — readers without the admin key get 401 instead"


@dataclass(frozen=True)
class Operation:
    """One method on one path: what it takes, what it answers, who may call it."""

    path: str
    method: str
    summary: str
    tag: str
    ok: type[BaseModel] | dict[str, Any] | None  # a model, a raw response object, or no body
    ok_description: str
    errors: dict[str, str] = field(default_factory=dict)
    security: list[dict[str, list[str]]] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    example: Any = None
    api: bool = True  # answers in the JSON error shape on 413/429/503 and any other error
    parameters: list[dict[str, Any]] | None = None  # query parameters
    # With `Accept: application/x-ndjson`: the 200 streamed as lines, each one of these or an Error.
    stream: tuple[type[BaseModel], ...] = ()


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def operations(settings: Settings) -> list[Operation]:
    """The paths table: every route of app.main.routes(), in the order the document lists them."""
    add = documents_request("add", settings.max_documents_per_call)
    update = documents_request("update", settings.max_documents_per_call)
    get_docs = get_documents_request(settings.max_get_documents)
    batch_400 = f"not a documents batch, or more than {settings.max_documents_per_call} documents"
    return [
        Operation("/api/v1/indexes", "get", "List indexes", "indexes", IndexList,
                  "every index with its document count", {"401": _ADMIN_401}, _ADMIN),
        Operation(_BASE, "post", "Create an index", "indexes", CreateIndexResponse,
                  "created; keep the indexId for storefront reads",
                  {"400": "invalid name, settings or model; model weights unavailable", "401": _ADMIN_401,
                   "409": "an index with this name exists"},
                  _ADMIN, CreateIndexRequest, body_required=False,
                  example={"model": {"name": "vit_tiny_patch16_224", "pretrained": False, "imageSize": 64, "seed": 0},
                           "reverseImageSearch": {"enabled": True}}),
        Operation(_BASE, "get", "Describe an index", "indexes", IndexDescription, "name, index id, settings",
                  {"401": _ADMIN_401, "404": _UNKNOWN}, _ADMIN),
        Operation(_BASE, "delete", "Delete an index with its products and vectors", "indexes", DeleteIndexResponse,
                  "deleted", {"401": _ADMIN_401, "404": _UNKNOWN}, _ADMIN),
        Operation(_BASE + "/settings", "get", "Index settings", "indexes", IndexSettings, "the settings document",
                  {"401": _ADMIN_401, "404": _UNKNOWN}, _ADMIN),
        Operation(_BASE + "/settings", "patch", "Change settings (only reverseImageSearch)", "indexes",
                  IndexSettings, "the new settings; enabling reverse search backfills local features",
                  {"400": "unknown or read-only setting, invalid value", "401": _ADMIN_401, "404": _UNKNOWN},
                  _ADMIN, SettingsPatch, example={"reverseImageSearch": {"enabled": True}}),
        Operation(_BASE + "/stats", "get", "Index statistics", "indexes", IndexStats,
                  "products, vectors, local-feature backfill progress", {"401": _ADMIN_401, "404": _UNKNOWN},
                  _ADMIN),
        Operation(_BASE + "/calibrate", "post",
                  "Self-calibration: tune the reverse image search knobs on wild photos of the index's own products",
                  "indexes", CalibrationReport,
                  "recall@1/@10 of the current knobs (before) and of the best of a sweep (after), on all photos, "
                  "the tuned half and the held-out half; with apply, the knobs are stored. With `Accept: "
                  f"{NDJSON}` the answer streams: progress lines, then the report line (or an error line)",
                  {"400": "invalid queries, seed or apply; unknown parameter", "401": _ADMIN_401,
                   "404": _UNKNOWN,
                   "409": "reverse image search off, features or embeddings still pending, fewer than two "
                   "products with images, or a calibration of this index already running"},
                  _ADMIN, CalibrateRequest, body_required=False, example={"queries": 100, "apply": True},
                  stream=CALIBRATION_STREAM_LINES),
        Operation(_BASE + "/documents", "post", "Add or replace products", "documents", DocumentsResponse,
                  "per-item outcome; the batch answers 200 even when items fail",
                  {"400": batch_400, "401": _ADMIN_401, "404": _UNKNOWN}, _ADMIN, add),
        Operation(_BASE + "/documents", "patch", "Partially update products", "documents", DocumentsResponse,
                  "per-item outcome; a changed variantImageUrl re-embeds",
                  {"400": batch_400, "401": _ADMIN_401, "404": _UNKNOWN}, _ADMIN, update),
        Operation(_BASE + "/documents", "delete", "Delete products", "documents", DeleteDocumentsResponse,
                  "per-id outcome", {"400": "ids must be an array of strings", "401": _ADMIN_401, "404": _UNKNOWN},
                  _ADMIN, DeleteDocumentsRequest),
        Operation(_BASE + "/get-documents", "post", "Get products by id", "documents", GetDocumentsResponse,
                  "one result per requested id, in order",
                  {"400": f"documentIds must be an array of at most {settings.max_get_documents} strings",
                   "401": _READ_401, "404": _UNKNOWN_READ}, _READ, get_docs),
        Operation(_BASE + "/search", "post", "Search: text, Search by Image, or browse", "search", SearchResponse,
                  "hits, best first (browse: ordered by _id)",
                  {"400": "invalid body, filter or image; unknown parameter", "401": _READ_401,
                   "404": _UNKNOWN_READ},
                  _READ, SearchRequest, body_required=False, example={"q": "*", "filter": "price:[* TO 50]"}),
        Operation(_BASE + "/reverse-image-search", "post",
                  "Reverse image search: find this exact product from a photo", "search",
                  ReverseImageSearchResponse, "hits best-first by visual similarity",
                  {"400": "q must be an image URL or base64 data URI; invalid filter; image cannot be fetched "
                   "or decoded", "401": _READ_401,
                   "404": "reverse image search is not enabled for this index (or unknown index)"},
                  _READ, ReverseImageSearchRequest,
                  example={"q": "https://example.com/photo.jpg", "limit": 5, "filter": "brand:Nike"}),
        Operation(_BASE + "/collections", "post",
                  "Browse a collection: the products whose productCollections hold collectionName", "search",
                  SearchResponse, "like a /search browse (ordered by _id unless sortBy)",
                  {"400": "invalid body, filter, facets or sortBy; unknown parameter", "401": _READ_401,
                   "404": _UNKNOWN_READ},
                  _READ, CollectionsRequest, example={"collectionName": "shoes", "limit": 20}),
        Operation(_BASE + "/collections", "get", "Browse a collection (GET: the body as base64 JSON in ?body=)",
                  "search", SearchResponse, "like POST /collections",
                  {"400": "body missing or not base64 JSON; invalid parameters", "401": _READ_401,
                   "404": _UNKNOWN_READ},
                  _READ, parameters=[{"name": "body", "in": "query", "required": True,
                                      "description": "base64 (standard or URL-safe, padding optional) of the "
                                      "POST /collections JSON body", "schema": {"type": "string"}}]),
        Operation(_BASE + "/recommendations/similar", "post",
                  "Products that look like the given ones (their stored vectors; no inference)", "search",
                  SimilarResponse, "best first by cosine similarity; the given ids excluded",
                  {"400": "invalid documentIds, limit, filter or attributes; unknown parameter",
                   "401": _READ_401, "404": "unknown index, or a given document not found / not embedded"},
                  _READ, SimilarRequest, example={"documentIds": ["sku-1"], "limit": 10}),
        Operation("/health", "get", "Health: database reachable, models loaded, queue and pool", "operations",
                  Health, "healthy", {}, api=False),
        Operation("/metrics", "get", "Prometheus metrics (text exposition format)", "operations",
                  {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}, "",
                  api=False),
        Operation("/openapi.json", "get", "This document", "operations",
                  {"description": "the OpenAPI 3.1 description", "content": {JSON: {"schema": {"type": "object"}}}},
                  "", api=False),
        Operation("/docs", "get", "API documentation page (Swagger UI rendering /openapi.json)", "web",
                  _html("HTML"), "", api=False),
        Operation("/ui", "get", "The search web page", "web", _html("HTML"), "", api=False),
        Operation("/", "get", "Redirects to the web page", "web", None, "", api=False),
        Operation("/static/{path}", "get", "The web pages' scripts, styles and the vendored Swagger UI", "web",
                  {"description": "a static file"}, "", api=False),
    ]


class _Generator(GenerateJsonSchema):
    """Pydantic's JSON Schema without a title on every property (names already say it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _component_schemas(ops: list[Operation]) -> dict[str, Any]:
    models: list[type[BaseModel]] = [Error, HealthUnavailable]
    for op in ops:
        for model in (op.body, op.ok, *op.stream):
            if isinstance(model, type) and model not in models:
                models.append(model)
    mode: JsonSchemaMode = "validation"
    _, top = models_json_schema([(m, mode) for m in models], ref_template=_REF, schema_generator=_Generator)
    return dict(sorted(top.get("$defs", {}).items()))


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref(Error), description)


def _operation(op: Operation, settings: Settings) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if op.ok is None:
        responses["307"] = {"description": "to /ui"}
    elif isinstance(op.ok, dict):
        responses["200"] = op.ok
    else:
        responses["200"] = _json(_ref(op.ok), op.ok_description)
        if op.stream:
            lines = {"oneOf": [*(_ref(m) for m in op.stream), _ref(Error)]}
            responses["200"]["content"][NDJSON] = {"schema": lines}
    for status, text in op.errors.items():
        responses[status] = _error(text)
    if op.path == "/health":
        responses["503"] = _json(_ref(HealthUnavailable), "database unavailable (with Retry-After)")
    if op.path == "/static/{path}":
        responses["404"] = _error("no such file")
    if op.api:
        common = {
            "413": f"request body over the configured limit of {settings.max_body_bytes} bytes "
            "(LOOKALIKE_MAX_BODY_BYTES)",
            "429": "overloaded; retry after `Retry-After` seconds",
            "503": "database unavailable or overloaded; retry after `Retry-After` seconds",
        }
        for status, text in common.items():
            responses.setdefault(status, _error(text))
    if op.path not in ("/openapi.json", "/"):
        responses["default"] = _error("any other error, always in the error shape")
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": responses}
    if op.security is not None:
        out["security"] = op.security
    if op.body is not None:
        media: dict[str, Any] = {"schema": _ref(op.body)}
        if op.example is not None:
            media["example"] = op.example
        out["requestBody"] = {
            "required": op.body_required,
            "description": f"JSON, at most {settings.max_body_bytes} bytes",
            "content": {JSON: media},
        }
    if op.path == "/static/{path}":
        out["parameters"] = [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}]
    if op.parameters:
        out["parameters"] = op.parameters
    return out


_INDEX_PARAM = {
    "name": "index_name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{INDEX_NAME_PATTERN}$"},
}


def _build(settings: Settings) -> dict[str, Any]:
    ops = operations(settings)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        item = paths.setdefault(op.path, {})
        if "{index_name}" in op.path:
            item.setdefault("parameters", [_INDEX_PARAM])
        item[op.method] = _operation(op, settings)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lookalike",
            "version": "1",
            "summary": "Reverse image search for product catalogs, speaking the Marqo Ecommerce API",
            "description": "Errors are always `{\"error\": \"...\", \"code\": \"...\"}`. Admin endpoints take "
            "`Authorization: Bearer <api key>`; read endpoints take the index's `x-marqo-index-id` "
            "(the admin key opens them too). Unknown top-level request keys are a 400 `unknown_parameter`. "
            f"Limits of this server: {settings.max_documents_per_call} documents per call, "
            f"{settings.max_get_documents} ids per get-documents, request bodies up to "
            f"{settings.max_body_bytes} bytes.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": name} for name in ("indexes", "documents", "search", "operations", "web")],
        "paths": paths,
        "components": {
            "schemas": _component_schemas(ops),
            "securitySchemes": {
                "adminKey": {"type": "http", "scheme": "bearer", "description": "the admin API key"},
                "indexId": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-marqo-index-id",
                    "description": "the index's read id (identifies an index for reading; grants no writes)",
                },
            },
        },
    }


@functools.cache
def _cached(max_documents: int, max_ids: int, max_body: int) -> dict[str, Any]:
    return _build(Settings(max_documents_per_call=max_documents, max_get_documents=max_ids, max_body_bytes=max_body))


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    """The document for these settings' limits (the defaults when none are given)."""
    s = settings or Settings()
    # A copy: callers (schemathesis, tests) may resolve references in place.
    return copy.deepcopy(_cached(s.max_documents_per_call, s.max_get_documents, s.max_body_bytes))


async def openapi_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document(request.app.state.settings))
