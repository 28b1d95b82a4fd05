"""Product endpoints: add/replace, partial update, get, delete."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.contract.documents import (
    DeleteDetails,
    DeleteDocumentsRequest,
    DeleteDocumentsResponse,
    DeleteItem,
    documents_request,
    get_documents_request,
)
from app.http.common import elapsed_ms, json_response, model_response, read_json
from app.http.indexes import admin, load_index, load_readable_index, services


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
    batch = documents_request("add", svc.settings.max_documents_per_call).parse(await read_json(request))
    items = await svc.ingest.add_documents(record, batch.documents)
    return _batch_response(items, started)


async def update_documents(request: Request) -> JSONResponse:
    started = time.perf_counter()
    admin(request)
    record = await load_index(request)
    svc = services(request)
    batch = documents_request("update", svc.settings.max_documents_per_call).parse(await read_json(request))
    items = await svc.ingest.update_documents(record, batch.documents)
    return _batch_response(items, started)


async def get_documents(request: Request) -> JSONResponse:
    record = await load_readable_index(request)
    svc = services(request)
    ids = get_documents_request(svc.settings.max_get_documents).parse(await read_json(request)).documentIds
    found = await svc.documents.get(record, ids)
    results = [
        {**found[i], "_found": True}
        if i in found
        else {"_id": i, "_found": False, "message": "document not found"}
        for i in ids
    ]
    return json_response({"results": results})


async def delete_documents(request: Request) -> JSONResponse:
    admin(request)
    record = await load_index(request)
    svc = services(request)
    ids = DeleteDocumentsRequest.parse(await read_json(request)).ids
    deleted = await svc.documents.delete(record, ids)
    items = [
        DeleteItem(id=i, result="deleted", status=200)
        if i in deleted
        else DeleteItem(id=i, result="not_found", status=404)
        for i in ids
    ]
    details = DeleteDetails(deletedDocuments=len(deleted), receivedDocumentIds=len(ids))
    return model_response(DeleteDocumentsResponse(details=details, items=items))
