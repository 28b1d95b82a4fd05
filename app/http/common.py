"""Request parsing and response shaping shared by the HTTP handlers."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.contract.common import ContractResponse
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
        # Strict UTF-8: json.loads(bytes) would accept UTF-8-encoded surrogates ("surrogatepass")
        # and UTF-16/32, and PostgreSQL cannot store lone surrogates.
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise bad_request(f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}", "invalid_json") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", "invalid_json") from exc
    except RecursionError as exc:
        raise bad_request("request body JSON is nested too deeply", "invalid_json") from exc
    except ValueError as exc:  # an integer literal over Python's 4300-digit conversion limit
        raise bad_request("request body holds a number with too many digits", "invalid_json") from exc
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise bad_request(
            "request body contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)", "invalid_json"
        )
    return value


# Only an escape can put a lone surrogate into the parsed value once the bytes are valid UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any key or string in a parsed JSON value holds a surrogate (iterative: values nest deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def json_response(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status)


def model_response(
    body: ContractResponse, status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A response built from its contract model: the keys it was given, by their JSON names."""
    return JSONResponse(
        body.model_dump(mode="json", by_alias=True, exclude_unset=True), status_code=status, headers=headers
    )


def elapsed_ms(started: float) -> int:
    return int(round((time.perf_counter() - started) * 1000))
