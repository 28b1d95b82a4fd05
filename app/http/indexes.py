"""Index management endpoints (admin), and how every handler finds its index and credentials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.auth import bearer_token, can_read, require_admin
from app.contract.indexes import (
    DeleteIndexResponse,
    EmbeddingStats,
    IndexStats,
    InferenceSettings,
    ReverseImageSearchStats,
)
from app.domain import inference
from app.domain.index_admin import IndexRecord
from app.errors import not_found, unauthorized
from app.http.common import json_response, model_response, read_json

if TYPE_CHECKING:
    from app.main import Services


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def admin(request: Request) -> None:
    require_admin(services(request).admin_keys, request.headers.get("authorization"))


async def load_index(request: Request) -> IndexRecord:
    name = request.path_params["index_name"]
    record = await services(request).indexes.find(name)
    if record is None:
        raise not_found(f"index {name!r} not found", "index_not_found")
    return record


async def load_readable_index(request: Request) -> IndexRecord:
    """An index for a read endpoint: its own `x-marqo-index-id`, or the admin key.

    An unknown index answers 401 to anyone but the admin, so index names cannot be
    probed without credentials.
    """
    svc = services(request)
    index_id = request.headers.get("x-marqo-index-id")
    authorization = request.headers.get("authorization")
    name = request.path_params["index_name"]
    record = await svc.indexes.find(name)
    if record is None:
        if svc.admin_keys.check(bearer_token(authorization)):
            raise not_found(f"index {name!r} not found", "index_not_found")
        raise unauthorized()
    if not can_read(record, index_id, svc.admin_keys, authorization):
        raise unauthorized()
    return record


def describe(record: IndexRecord) -> dict[str, Any]:
    return {
        "indexName": record.name,
        "indexId": record.index_id,
        "settings": record.settings,
        "createdAt": record.created_at.isoformat(),
    }


async def create_index(request: Request) -> JSONResponse:
    admin(request)
    body = await read_json(request, required=False)
    record = await services(request).indexes.create(request.path_params["index_name"], body)
    return json_response({"indexName": record.name, "indexId": record.index_id, "settings": record.settings})


async def list_indexes(request: Request) -> JSONResponse:
    admin(request)
    rows = await services(request).indexes.with_document_counts()
    return json_response({"results": [{**describe(record), "documentCount": count} for record, count in rows]})


async def get_index(request: Request) -> JSONResponse:
    admin(request)
    return json_response(describe(await load_index(request)))


async def get_settings(request: Request) -> JSONResponse:
    admin(request)
    return json_response((await load_index(request)).settings)


async def patch_settings(request: Request) -> JSONResponse:
    admin(request)
    record = await load_index(request)
    updated = await services(request).indexes.change_settings(record, await read_json(request))
    return json_response(updated.settings)


async def delete_index(request: Request) -> JSONResponse:
    admin(request)
    record = await load_index(request)
    await services(request).indexes.delete(record)
    return model_response(DeleteIndexResponse(acknowledged=True, indexName=record.name))


async def index_stats(request: Request) -> JSONResponse:
    admin(request)
    record = await load_index(request)
    stats = await services(request).indexes.statistics(record)
    enabled = record.reverse_search_enabled
    return model_response(
        IndexStats(
            numberOfDocuments=stats.products,
            numberOfVectors=stats.vectors,
            vectorBytes=stats.vector_bytes,
            reverseImageSearch=ReverseImageSearchStats(
                enabled=enabled,
                featuresReady=stats.features_ready,
                featuresPending=stats.features_pending,
                featuresFailed=stats.features_failed,
                ready=enabled and stats.features_pending == 0,
            ),
            embeddings=EmbeddingStats(pending=stats.embeddings_pending, failed=stats.embeddings_failed),
            inference=InferenceSettings.model_validate(inference.effective(record, services(request).vision)),
        )
    )
