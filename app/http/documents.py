"""Product endpoints: add/replace, partial update, get, delete."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.errors import bad_request
from app.http.common import elapsed_ms, json_response, read_json, require_object
from app.http.indexes import admin, load_index, load_readable_index, services
from app.storage import products


def _documents_list(body: Any, limit: int) -> list[Any]:
    body = require_object(body)
    docs = body.get("documents")
    if not isinstance(docs, list):
        raise bad_request('body must be {"documents": [ ... ]}', "invalid_documents")
    if not docs:
        raise bad_request("documents must not be empty", "invalid_documents")
    if len(docs) > limit:
        raise bad_request(
            f"at most {limit} documents per call (got {len(docs)}); split the batch", "too_many_documents"
        )
    return docs


def _batch_response(items: list[Any], started: float) -> JSONResponse:
    return json_response(
        {
            "errors": any(item.status >= 300 for item in items),
            "items": [item.to_json() for item in items],
            "processingTimeMs": elapsed_ms(started),
        }
    )


async def add_documents(request: Request) -> JSONResponse:
    started = time.perf_counter()
    admin(request)
    record = await load_index(request)
    svc = services(request)
    docs = _documents_list(await read_json(request), svc.settings.max_documents_per_call)
    items = await svc.ingest.add_documents(record, docs)
    return _batch_response(items, started)


async def update_documents(request: Request) -> JSONResponse:
    started = time.perf_counter()
    admin(request)
    record = await load_index(request)
    svc = services(request)
    docs = _documents_list(await read_json(request), svc.settings.max_documents_per_call)
    items = await svc.ingest.update_documents(record, docs)
    return _batch_response(items, started)


def _string_list(value: Any, name: str, limit: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{name} must be an array of strings", "invalid_request")
    if len(value) > limit:
        raise bad_request(f"{name} may hold at most {limit} ids", "invalid_request")
    return value


async def get_documents(request: Request) -> JSONResponse:
    record = await load_readable_index(request)
    svc = services(request)
    body = require_object(await read_json(request))
    ids = _string_list(body.get("documentIds"), "documentIds", svc.settings.max_get_documents)
    return json_response({"results": await svc.search.get_documents(record, ids)})


async def delete_documents(request: Request) -> JSONResponse:
    admin(request)
    record = await load_index(request)
    svc = services(request)
    body = require_object(await read_json(request))
    ids = _string_list(body.get("ids"), "ids", 10_000)
    deleted = await products.delete_documents(svc.pool, record, [i for i in ids if "\x00" not in i])
    items = [
        {"_id": i, "result": "deleted", "status": 200}
        if i in deleted
        else {"_id": i, "result": "not_found", "status": 404}
        for i in ids
    ]
    return json_response(
        {"details": {"deletedDocuments": len(deleted), "receivedDocumentIds": len(ids)}, "items": items}
    )
