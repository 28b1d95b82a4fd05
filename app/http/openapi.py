"""The OpenAPI 3.1 description of every endpoint, served at /openapi.json.

Hand-written (the handlers parse bodies themselves, so nothing could generate it) and
kept honest by the test suite: every response the tests' `api` client receives is
validated against it (tests/conftest.py), and tests/test_openapi.py checks that every
route of the app is described. OpenAPI 3.1 schemas are plain JSON Schema 2020-12.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _body(schema: dict[str, Any], *, required: bool = True, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": required, "content": {JSON: media}}


# Every operation can also answer with these (body limit, overload, database down, bug).
_COMMON_ERRORS = {
    "413": _error("request body over the configured limit"),
    "429": _error("overloaded; retry after `Retry-After` seconds"),
    "503": _error("database unavailable or overloaded; retry after `Retry-After` seconds"),
    "default": _error("any other error, always in the error shape"),
}

_ADMIN = [{"adminKey": []}]
_READ = [{"indexId": []}, {"adminKey": []}]

_INDEX_PARAM = {
    "name": "index_name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
}


def _op(
    summary: str,
    tag: str,
    ok: dict[str, Any],
    errors: dict[str, str],
    *,
    security: list[dict[str, list[str]]] | None = None,
    body: dict[str, Any] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {"200": ok}}
    if description:
        op["description"] = description
    if security is not None:
        op["security"] = security
    if body is not None:
        op["requestBody"] = body
    for status, text in errors.items():
        op["responses"][status] = _error(text)
    op["responses"].update({k: v for k, v in _COMMON_ERRORS.items() if k not in op["responses"]})
    return op


_FIELD_VALUE = {
    "oneOf": [
        {"type": "string"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "array", "items": {"type": "string"}},
    ]
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code"],
        "properties": {
            "error": {"type": "string", "description": "what a person reads"},
            "code": {
                "type": "string",
                "pattern": "^[a-z][a-z0-9_]*$",
                "description": "what a program branches on (stable snake_case)",
            },
        },
    },
    "ModelSetting": {
        "description": "a timm model name with its pretrained tag, or an explicit spec "
        "(`pretrained: false` = deterministic random weights, fully offline)",
        "oneOf": [
            {"type": "string"},
            {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "pretrained": {"type": ["boolean", "string"]},
                    "imageSize": {"type": "integer"},
                    "seed": {"type": "integer"},
                },
                "additionalProperties": False,
            },
        ],
    },
    "ReverseImageSearchSettings": {
        "type": "object",
        "properties": {
            "enabled": {"type": "boolean", "default": False},
            "candidatePool": {"type": "integer", "minimum": 10, "maximum": 1000},
            "queryCrops": {
                "description": "query crops embedded by the model, the whole photo included; 'auto' (the "
                "default) embeds as many (up to 4) as fit a 60 ms budget at the model's measured speed",
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": 8},
                    {"type": "string", "enum": ["auto"]},
                ],
            },
        },
    },
    "IndexSettings": {
        "type": "object",
        "description": "indexes created through the API carry all four; rows written by other means may not",
        "properties": {
            "model": {
                "type": "object",
                "required": ["name", "pretrained", "seed"],
                "properties": {
                    "name": {"type": "string"},
                    "pretrained": {"type": "boolean"},
                    "imageSize": {"type": "integer"},
                    "seed": {"type": "integer"},
                },
            },
            "vectorType": {"enum": ["halfvec", "vector"]},
            "dimensions": {"type": "integer", "minimum": 1},
            "reverseImageSearch": _ref("ReverseImageSearchSettings"),
        },
    },
    "CreateIndexRequest": {
        "type": "object",
        "properties": {
            "model": _ref("ModelSetting"),
            "vectorType": {"enum": ["halfvec", "vector"], "default": "halfvec"},
            "reverseImageSearch": _ref("ReverseImageSearchSettings"),
        },
        "additionalProperties": False,
    },
    "CreateIndexResponse": {
        "type": "object",
        "required": ["indexName", "indexId", "settings"],
        "properties": {
            "indexName": {"type": "string"},
            "indexId": {"type": "string", "description": "send as `x-marqo-index-id` on read endpoints"},
            "settings": _ref("IndexSettings"),
        },
    },
    "IndexDescription": {
        "type": "object",
        "required": ["indexName", "indexId", "settings", "createdAt"],
        "properties": {
            "indexName": {"type": "string"},
            "indexId": {"type": "string"},
            "settings": _ref("IndexSettings"),
            "createdAt": {"type": "string", "format": "date-time"},
            "documentCount": {"type": "integer", "minimum": 0},
        },
    },
    "IndexList": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": _ref("IndexDescription")}},
    },
    "DeleteIndexResponse": {
        "type": "object",
        "required": ["acknowledged", "indexName"],
        "properties": {"acknowledged": {"const": True}, "indexName": {"type": "string"}},
    },
    "IndexStats": {
        "type": "object",
        "required": ["numberOfDocuments", "numberOfVectors", "vectorBytes", "reverseImageSearch"],
        "properties": {
            "numberOfDocuments": {"type": "integer", "minimum": 0},
            "numberOfVectors": {"type": "integer", "minimum": 0},
            "vectorBytes": {"type": "integer", "minimum": 0},
            "reverseImageSearch": {
                "type": "object",
                "required": ["enabled", "featuresReady", "featuresPending", "featuresFailed", "ready"],
                "properties": {
                    "enabled": {"type": "boolean"},
                    "featuresReady": {"type": "integer", "minimum": 0},
                    "featuresPending": {"type": "integer", "minimum": 0},
                    "featuresFailed": {"type": "integer", "minimum": 0},
                    "ready": {"type": "boolean"},
                },
            },
            "embeddings": {
                "type": "object",
                "description": "queue mode: products waiting for a worker, and products whose embedding failed",
                "required": ["pending", "failed"],
                "properties": {
                    "pending": {"type": "integer", "minimum": 0},
                    "failed": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
    "Product": {
        "type": "object",
        "description": "a product; custom fields may be strings, numbers, booleans or arrays of strings",
        "required": ["_id", "productTitle", "variantImageUrl", "price"],
        "properties": {
            "_id": {"type": "string", "minLength": 1},
            "productTitle": {"type": "string", "minLength": 1},
            "variantImageUrl": {"type": "string", "description": "http(s) URL or data:image/*;base64, URL"},
            "price": {"type": "number"},
            "variantTitle": {"type": "string"},
            "description": {"type": "string"},
            "parentProductId": {"type": "string"},
            "productCollections": {"type": "array", "items": {"type": "string"}},
            "collections": {"type": "array", "items": {"type": "string"}, "description": "alias"},
        },
        "additionalProperties": _FIELD_VALUE,
    },
    "ProductPatch": {
        "type": "object",
        "required": ["_id"],
        "properties": {"_id": {"type": "string"}},
        "additionalProperties": _FIELD_VALUE,
    },
    "DocumentsRequest": {
        "type": "object",
        "required": ["documents"],
        "properties": {"documents": {"type": "array", "minItems": 1, "maxItems": 128, "items": _ref("Product")}},
    },
    "DocumentsPatchRequest": {
        "type": "object",
        "required": ["documents"],
        "properties": {
            "documents": {"type": "array", "minItems": 1, "maxItems": 128, "items": _ref("ProductPatch")}
        },
    },
    "DocumentsResponse": {
        "type": "object",
        "required": ["errors", "items", "processingTimeMs"],
        "properties": {
            "errors": {"type": "boolean", "description": "true when any item failed"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["_id", "status"],
                    "properties": {
                        "_id": {"type": ["string", "null"]},
                        "status": {"type": "integer", "minimum": 100, "maximum": 599},
                        "message": {"type": "string"},
                    },
                },
            },
            "processingTimeMs": {"type": "integer", "minimum": 0},
        },
    },
    "GetDocumentsRequest": {
        "type": "object",
        "required": ["documentIds"],
        "properties": {"documentIds": {"type": "array", "maxItems": 100, "items": {"type": "string"}}},
    },
    "GetDocumentsResponse": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["_id", "_found"],
                            "properties": {
                                "_id": {"type": "string"},
                                "_found": {"const": True},
                                "_embedding": {
                                    "type": "object",
                                    "description": "only on a product not searchable yet (queue mode): "
                                    "`pending` (waiting for a worker) or `failed` (with the reason)",
                                    "required": ["status", "message"],
                                    "properties": {
                                        "status": {"enum": ["pending", "failed"]},
                                        "message": {"type": "string"},
                                    },
                                },
                            },
                            "additionalProperties": _FIELD_VALUE,
                        },
                        {
                            "type": "object",
                            "required": ["_id", "_found", "message"],
                            "properties": {
                                "_id": {"type": "string"},
                                "_found": {"const": False},
                                "message": {"type": "string"},
                            },
                        },
                    ]
                },
            }
        },
    },
    "DeleteDocumentsRequest": {
        "type": "object",
        "required": ["ids"],
        "properties": {"ids": {"type": "array", "items": {"type": "string"}}},
    },
    "DeleteDocumentsResponse": {
        "type": "object",
        "required": ["details", "items"],
        "properties": {
            "details": {
                "type": "object",
                "required": ["deletedDocuments", "receivedDocumentIds"],
                "properties": {
                    "deletedDocuments": {"type": "integer", "minimum": 0},
                    "receivedDocumentIds": {"type": "integer", "minimum": 0},
                },
            },
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["_id", "result", "status"],
                    "properties": {
                        "_id": {"type": "string"},
                        "result": {"enum": ["deleted", "not_found"]},
                        "status": {"enum": [200, 404]},
                    },
                },
            },
        },
    },
    "Hit": {
        "type": "object",
        "description": "the default fields (productTitle, variantTitle, price, variantImageUrl, collections) "
        "or those in attributesToRetrieve, plus `_id` and (when ranked) `_score`",
        "required": ["_id"],
        "properties": {
            "_id": {"type": "string"},
            "_score": {"type": "number", "description": "higher is more similar"},
            "productTitle": {"type": "string"},
            "variantTitle": {"type": "string"},
            "price": {"type": "number"},
            "variantImageUrl": {"type": "string"},
            "collections": {"type": "array", "items": {"type": "string"}},
        },
        "additionalProperties": _FIELD_VALUE,
    },
    "SearchRequest": {
        "type": "object",
        "properties": {
            "q": {
                "type": "string",
                "description": "text (lexical search), an image URL or data URL (Search by Image), "
                "or `*` / absent to browse",
            },
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
            "offset": {"type": "integer", "minimum": 0, "default": 0},
            "filter": {"type": ["string", "null"], "description": "filter DSL, e.g. `brand:Nike AND price:[* TO 200]`"},
            "attributesToRetrieve": {"type": "array", "items": {"type": "string"}},
        },
    },
    "SearchResponse": {
        "type": "object",
        "required": ["hits", "limit", "offset", "query", "processingTimeMs"],
        "properties": {
            "hits": {"type": "array", "items": _ref("Hit")},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "query": {"type": "string"},
            "processingTimeMs": {"type": "integer", "minimum": 0},
        },
    },
    "ReverseImageSearchRequest": {
        "type": "object",
        "required": ["q"],
        "properties": {
            "q": {
                "type": "string",
                "description": "an http(s) image URL whose path ends in .jpg .jpeg .png .webp .tiff .avif, "
                "or a data:image/*;base64, URL",
            },
            "limit": {"type": "integer", "default": 10, "description": "clamped to 1-10"},
            "filter": {"type": ["string", "null"]},
            "attributesToRetrieve": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ReverseImageSearchResponse": {
        "type": "object",
        "required": ["hits", "limit", "processingTimeMs"],
        "properties": {
            "hits": {"type": "array", "maxItems": 10, "items": _ref("Hit")},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10},
            "processingTimeMs": {"type": "integer", "minimum": 0},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "database", "models", "pool"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "database": {"enum": ["ok", "down"]},
            "modelsLoaded": {"type": "array", "items": {"type": "string"}},
            "models": {
                "type": "object",
                "required": ["loaded", "embedQueueDepth"],
                "properties": {
                    "loaded": {"type": "array", "items": {"type": "string"}},
                    "embedQueueDepth": {"type": "integer", "minimum": 0},
                },
            },
            "pool": {
                "type": "object",
                "required": ["size", "idle", "max"],
                "properties": {
                    "size": {"type": "integer", "minimum": 0},
                    "idle": {"type": "integer", "minimum": 0},
                    "max": {"type": "integer", "minimum": 0},
                },
            },
            "reads": {
                "enum": ["replicas", "primary"],
                "description": "where the read endpoints go now: a usable replica, or the primary",
            },
            "replicas": {
                "type": "array",
                "description": "each LOOKALIKE_DATABASE_READ_URL replica (password redacted) and its state",
                "items": {
                    "type": "object",
                    "required": ["url", "state", "lagSeconds", "lagBytes"],
                    "properties": {
                        "url": {"type": "string"},
                        "state": {"enum": ["ok", "lagging", "down", "unknown"]},
                        "lagSeconds": {"type": ["number", "null"]},
                        "lagBytes": {"type": ["integer", "null"]},
                        "replayPaused": {"type": "boolean"},
                        "reads": {"type": "integer", "minimum": 0},
                        "error": {"type": ["string", "null"]},
                    },
                },
            },
        },
    },
}

_BASE = "/api/v1/indexes/{index_name}"


def _paths() -> dict[str, Any]:
    unknown_index = "unknown index (admin) — readers without the admin key get 401 instead"
    return {
        "/api/v1/indexes": {
            "get": _op(
                "List indexes",
                "indexes",
                _json(_ref("IndexList"), "every index with its document count"),
                {"401": "missing or wrong admin key"},
                security=_ADMIN,
            )
        },
        _BASE: {
            "parameters": [_INDEX_PARAM],
            "post": _op(
                "Create an index",
                "indexes",
                _json(_ref("CreateIndexResponse"), "created; keep the indexId for storefront reads"),
                {
                    "400": "invalid name, settings or model; model weights unavailable",
                    "401": "missing or wrong admin key",
                    "409": "an index with this name exists",
                },
                security=_ADMIN,
                body=_body(
                    _ref("CreateIndexRequest"),
                    required=False,
                    example={
                        "model": {"name": "vit_tiny_patch16_224", "pretrained": False, "imageSize": 64, "seed": 0},
                        "reverseImageSearch": {"enabled": True},
                    },
                ),
            ),
            "get": _op(
                "Describe an index",
                "indexes",
                _json(_ref("IndexDescription"), "name, index id, settings"),
                {"401": "missing or wrong admin key", "404": "unknown index"},
                security=_ADMIN,
            ),
            "delete": _op(
                "Delete an index with its products and vectors",
                "indexes",
                _json(_ref("DeleteIndexResponse"), "deleted"),
                {"401": "missing or wrong admin key", "404": "unknown index"},
                security=_ADMIN,
            ),
        },
        _BASE + "/settings": {
            "parameters": [_INDEX_PARAM],
            "get": _op(
                "Index settings",
                "indexes",
                _json(_ref("IndexSettings"), "the settings document"),
                {"401": "missing or wrong admin key", "404": "unknown index"},
                security=_ADMIN,
            ),
            "patch": _op(
                "Change settings (only reverseImageSearch)",
                "indexes",
                _json(_ref("IndexSettings"), "the new settings; enabling reverse search backfills local features"),
                {
                    "400": "unknown or read-only setting, invalid value",
                    "401": "missing or wrong admin key",
                    "404": "unknown index",
                },
                security=_ADMIN,
                body=_body(
                    {"type": "object", "properties": {"reverseImageSearch": _ref("ReverseImageSearchSettings")}},
                    example={"reverseImageSearch": {"enabled": True}},
                ),
            ),
        },
        _BASE + "/stats": {
            "parameters": [_INDEX_PARAM],
            "get": _op(
                "Index statistics",
                "indexes",
                _json(_ref("IndexStats"), "products, vectors, local-feature backfill progress"),
                {"401": "missing or wrong admin key", "404": "unknown index"},
                security=_ADMIN,
            ),
        },
        _BASE + "/documents": {
            "parameters": [_INDEX_PARAM],
            "post": _op(
                "Add or replace products",
                "documents",
                _json(_ref("DocumentsResponse"), "per-item outcome; the batch answers 200 even when items fail"),
                {"400": "not a documents batch, or too many documents", "401": "missing or wrong admin key",
                 "404": "unknown index"},
                security=_ADMIN,
                body=_body(_ref("DocumentsRequest")),
            ),
            "patch": _op(
                "Partially update products",
                "documents",
                _json(_ref("DocumentsResponse"), "per-item outcome; a changed variantImageUrl re-embeds"),
                {"400": "not a documents batch, or too many documents", "401": "missing or wrong admin key",
                 "404": "unknown index"},
                security=_ADMIN,
                body=_body(_ref("DocumentsPatchRequest")),
            ),
            "delete": _op(
                "Delete products",
                "documents",
                _json(_ref("DeleteDocumentsResponse"), "per-id outcome"),
                {"400": "ids must be an array of strings", "401": "missing or wrong admin key",
                 "404": "unknown index"},
                security=_ADMIN,
                body=_body(_ref("DeleteDocumentsRequest")),
            ),
        },
        _BASE + "/get-documents": {
            "parameters": [_INDEX_PARAM],
            "post": _op(
                "Get products by id",
                "documents",
                _json(_ref("GetDocumentsResponse"), "one result per requested id, in order"),
                {"400": "documentIds must be an array of at most 100 strings",
                 "401": "missing or wrong x-marqo-index-id", "404": unknown_index},
                security=_READ,
                body=_body(_ref("GetDocumentsRequest")),
            ),
        },
        _BASE + "/search": {
            "parameters": [_INDEX_PARAM],
            "post": _op(
                "Search: text, Search by Image, or browse",
                "search",
                _json(_ref("SearchResponse"), "hits, best first (browse: ordered by _id)"),
                {"400": "invalid body, filter or image", "401": "missing or wrong x-marqo-index-id",
                 "404": unknown_index},
                security=_READ,
                body=_body(_ref("SearchRequest"), required=False, example={"q": "*", "filter": "price:[* TO 50]"}),
            ),
        },
        _BASE + "/reverse-image-search": {
            "parameters": [_INDEX_PARAM],
            "post": _op(
                "Reverse image search: find this exact product from a photo",
                "search",
                _json(_ref("ReverseImageSearchResponse"), "hits best-first by visual similarity"),
                {
                    "400": "q must be an image URL or base64 data URI; invalid filter; image cannot be fetched "
                    "or decoded",
                    "401": "missing or wrong x-marqo-index-id",
                    "404": "reverse image search is not enabled for this index (or unknown index)",
                },
                security=_READ,
                body=_body(
                    _ref("ReverseImageSearchRequest"),
                    example={"q": "https://example.com/photo.jpg", "limit": 5, "filter": "brand:Nike"},
                ),
            ),
        },
        "/health": {
            "get": {
                "summary": "Health: database reachable, models loaded, queue and pool",
                "tags": ["operations"],
                "responses": {
                    "200": _json(_ref("Health"), "healthy"),
                    "503": _json(
                        {"allOf": [_ref("Health"), _ref("Error")]}, "database unavailable (with Retry-After)"
                    ),
                    "default": _error("any other error"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "tags": ["operations"],
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "default": _error("any other error"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "tags": ["operations"],
                "responses": {"200": _json({"type": "object"}, "the OpenAPI 3.1 description")},
            }
        },
        "/docs": {
            "get": {
                "summary": "API documentation page (renders /openapi.json)",
                "tags": ["web"],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/ui": {
            "get": {
                "summary": "The search web page",
                "tags": ["web"],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/": {
            "get": {
                "summary": "Redirects to the web page",
                "tags": ["web"],
                "responses": {"307": {"description": "to /ui"}},
            }
        },
        "/static/{path}": {
            "get": {
                "summary": "The web page's scripts and styles",
                "tags": ["web"],
                "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "a static file"},
                    "404": _error("no such file"),
                    "default": _error("any other error"),
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lookalike",
            "version": "1",
            "summary": "Reverse image search for product catalogs, speaking the Marqo Ecommerce API",
            "description": "Errors are always `{\"error\": \"...\", \"code\": \"...\"}`. Admin endpoints take "
            "`Authorization: Bearer <api key>`; read endpoints take the index's `x-marqo-index-id` "
            "(the admin key opens them too).",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "indexes"},
            {"name": "documents"},
            {"name": "search"},
            {"name": "operations"},
            {"name": "web"},
        ],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
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


async def openapi_endpoint(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())
