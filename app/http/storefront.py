"""Read endpoints of a storefront: /collections (POST, and GET ?body=<base64 JSON>) and
/recommendations/similar."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.contract.storefront import CollectionsRequest, SimilarRequest, parse_body
from app.domain.index_admin import IndexRecord
from app.domain.search import SearchOutcome, StageTimer
from app.errors import bad_request
from app.http.common import elapsed_ms, json_response, read_json
from app.http.indexes import load_readable_index, services
from app.http.ops import observe_stages
from app.http.search import with_timing

# A GET URL carries the body base64-encoded; browsers and proxies cap URLs near 8-64 kB.
MAX_GET_BODY_CHARS = 64 * 1024


def _listing(outcome: SearchOutcome, limit: int, offset: int, started: float) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hits": outcome.hits,
        "limit": limit,
        "offset": offset,
        "query": "*",
        "processingTimeMs": elapsed_ms(started),
    }
    if outcome.facets is not None:
        body["facets"] = outcome.facets
    return body


async def _collection(request: Request, record: IndexRecord, body: Any, started: float) -> JSONResponse:
    parsed: CollectionsRequest = parse_body(CollectionsRequest, body)
    timer = StageTimer()
    try:
        outcome = await services(request).search.collection(record, parsed, timer)
    finally:
        observe_stages(request, "collections", timer.stages)
    return with_timing(json_response(_listing(outcome, parsed.limit, parsed.offset, started)), timer)


async def collections_post(request: Request) -> JSONResponse:
    started = time.perf_counter()
    record = await load_readable_index(request)  # credentials before the body is read
    return await _collection(request, record, await read_json(request, required=False), started)


def decode_get_body(raw: str | None) -> Any:
    """`?body=`: base64 (standard or URL-safe, padding optional) of the POST body's JSON."""
    if raw is None:
        raise bad_request("body is required: base64 of the JSON request body", "invalid_body")
    if len(raw) > MAX_GET_BODY_CHARS:
        raise bad_request(f"body is longer than {MAX_GET_BODY_CHARS} characters; use POST", "invalid_body")
    text = raw.strip().replace("-", "+").replace("_", "/")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        return json.loads(data.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise bad_request("body must be base64 of a JSON object", "invalid_body") from exc


async def collections_get(request: Request) -> JSONResponse:
    started = time.perf_counter()
    record = await load_readable_index(request)
    return await _collection(request, record, decode_get_body(request.query_params.get("body")), started)


async def similar(request: Request) -> JSONResponse:
    started = time.perf_counter()
    record = await load_readable_index(request)
    parsed: SimilarRequest = parse_body(SimilarRequest, await read_json(request, required=False))
    timer = StageTimer()
    try:
        hits = await services(request).search.similar(record, parsed, timer)
    finally:
        observe_stages(request, "recommendations-similar", timer.stages)
    return with_timing(
        json_response({"hits": hits, "limit": parsed.limit, "processingTimeMs": elapsed_ms(started)}), timer
    )
