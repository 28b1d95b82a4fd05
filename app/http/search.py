"""Read endpoints: /search and /reverse-image-search."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.contract.search import ReverseSearchRequest, SearchRequest
from app.domain.search import StageTimer
from app.errors import ImageError, bad_request, not_found
from app.http.common import elapsed_ms, json_response, read_json
from app.http.indexes import load_readable_index, services
from app.http.ops import observe_stages


def _with_timing(response: JSONResponse, timer: StageTimer) -> JSONResponse:
    """Per-stage milliseconds as a standard Server-Timing header (browsers' devtools show it)."""
    response.headers["server-timing"] = ", ".join(f"{name};dur={ms:.1f}" for name, ms in timer.stages.items())
    return response


def _image_error(exc: ImageError) -> Exception:
    return bad_request(f"q: {exc.message}", exc.code)


async def search(request: Request) -> JSONResponse:
    started = time.perf_counter()
    record = await load_readable_index(request)
    parsed = SearchRequest.parse(await read_json(request, required=False))
    timer = StageTimer()
    try:
        hits = await services(request).search.search(record, parsed, timer)
    except ImageError as exc:
        raise _image_error(exc) from exc
    finally:
        observe_stages(request, "search", timer.stages)
    return _with_timing(
        json_response(
            {
                "hits": hits,
                "limit": parsed.limit,
                "offset": parsed.offset,
                "query": parsed.q if parsed.q is not None else "*",
                "processingTimeMs": elapsed_ms(started),
            }
        ),
        timer,
    )


async def reverse_image_search(request: Request) -> JSONResponse:
    started = time.perf_counter()
    record = await load_readable_index(request)
    if not record.reverse_search_enabled:
        raise not_found("reverse image search is not enabled for this index", "reverse_search_disabled")
    parsed = ReverseSearchRequest.parse(await read_json(request, required=False))
    timer = StageTimer()
    try:
        result = await services(request).reverse.search(record, parsed, timer)
    except ImageError as exc:
        raise _image_error(exc) from exc
    finally:
        observe_stages(request, "reverse-image-search", timer.stages)
    body: dict[str, object] = {"hits": result.hits}
    if result.regions is not None:
        body["regions"] = result.regions
    body.update(limit=parsed.limit, processingTimeMs=elapsed_ms(started))
    return _with_timing(json_response(body), timer)
