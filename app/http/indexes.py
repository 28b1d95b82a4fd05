"""Index management endpoints (admin)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.auth import bearer_token, can_read, require_admin
from app.domain import index_admin, index_settings
from app.errors import not_found, unauthorized
from app.http.common import json_response, read_json
from app.storage import indexes, products
from app.storage.indexes import IndexRecord


def services(request: Request) -> Any:
    return request.app.state.services


def admin(request: Request) -> None:
    require_admin(services(request).admin_keys, request.headers.get("authorization"))


async def _find_index(request: Request, name: str) -> IndexRecord | None:
    # A name that could never have been created is not looked up: path text may hold
    # NUL or other characters PostgreSQL rejects (500s found by fuzzing).
    if not index_settings.INDEX_NAME_RE.fullmatch(name):
        return None
    return await indexes.get_index(services(request).pool, name)


async def load_index(request: Request) -> IndexRecord:
    name = request.path_params["index_name"]
    record = await _find_index(request, name)
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
    record = await _find_index(request, name)
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
    svc = services(request)
    record = await index_admin.create_index(svc.pool, svc.vision, request.path_params["index_name"], body)
    return json_response({"indexName": record.name, "indexId": record.index_id, "settings": record.settings})


async def list_indexes(request: Request) -> JSONResponse:
    admin(request)
    rows = await indexes.list_indexes(services(request).pool)
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
    body = await read_json(request)
    new_settings = index_settings.parse_patch_body(body, record.settings)
    svc = services(request)
    was_enabled = record.reverse_search_enabled
    async with svc.pool.acquire() as conn, conn.transaction():
        updated = await indexes.update_settings(conn, record.pk, new_settings)
        if updated.reverse_search_enabled and not was_enabled:
            await products.mark_features_pending(conn, updated)
        elif was_enabled and not updated.reverse_search_enabled:
            await products.clear_features_wanted(conn, updated)
    if updated.reverse_search_enabled and not was_enabled:
        svc.backfill.wake()
    return json_response(updated.settings)


async def delete_index(request: Request) -> JSONResponse:
    admin(request)
    record = await load_index(request)
    async with services(request).pool.acquire() as conn, conn.transaction():
        await indexes.delete_index(conn, record)
    return json_response({"acknowledged": True, "indexName": record.name})


async def index_stats(request: Request) -> JSONResponse:
    admin(request)
    record = await load_index(request)
    stats = await indexes.index_stats(services(request).pool, record)
    enabled = record.reverse_search_enabled
    return json_response(
        {
            "numberOfDocuments": stats["products"],
            "numberOfVectors": stats["vectors"],
            "vectorBytes": stats["vector_bytes"],
            "reverseImageSearch": {
                "enabled": enabled,
                "featuresReady": stats["ready"],
                "featuresPending": stats["pending"],
                "featuresFailed": stats["failed"],
                "ready": enabled and stats["pending"] == 0,
            },
            "embeddings": {"pending": stats["embeddings_pending"], "failed": stats["embeddings_failed"]},
        }
    )
