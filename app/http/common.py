"""Request parsing and response shaping shared by the HTTP handlers."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.errors import ApiError, bad_request


class PayloadTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "payload_too_large", f"request body is larger than the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(limit)
        except ValueError as exc:
            raise bad_request("invalid Content-Length header") from exc
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, *, required: bool = True) -> Any:
    limit: int = request.app.state.settings.max_body_bytes
    body = await read_body(request, limit)
    if not body.strip():
        if required:
            raise bad_request("request body must be JSON", "invalid_json")
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", "invalid_json") from exc
    except RecursionError as exc:
        raise bad_request("request body JSON is nested too deeply", "invalid_json") from exc


def json_response(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status)


def elapsed_ms(started: float) -> int:
    return int(round((time.perf_counter() - started) * 1000))


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body
