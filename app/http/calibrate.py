"""POST /indexes/{index}/calibrate (admin): self-calibration of reverse image search, run by the
service (app.domain.calibrate) and answered as the report, or streamed as NDJSON progress lines
ending with the report when the client asks for `application/x-ndjson`.

Why a stream and not a job resource polled by the client: a stream works unchanged behind a load
balancer spreading requests over several `lookalike serve` processes (a job held in one process
would have to be found again by every poll, or kept in the database), ends the work when the
client goes away instead of leaving an orphan run burning CPU, and its progress lines (at least
one per photo, seconds apart) keep idle-timeout proxies from cutting a run of minutes. Buffering
proxies are asked not to buffer (`X-Accel-Buffering: no`, `Cache-Control: no-transform`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from app.contract.calibrate import (
    NDJSON,
    CalibrateRequest,
    CalibrationProgress,
    CalibrationProgressLine,
    CalibrationReport,
    CalibrationReportLine,
)
from app.domain import calibrate as calibration
from app.errors import ApiError
from app.http.common import model_response, read_json
from app.http.indexes import admin, load_index, services

log = logging.getLogger("lookalike.calibrate")

Event = calibration.Progress | calibration.CalibrationReport


def _report(report: calibration.CalibrationReport) -> CalibrationReport:
    return CalibrationReport.model_validate(report.as_json())


def _line(event: Event) -> bytes:
    if isinstance(event, calibration.CalibrationReport):
        body: Any = CalibrationReportLine(report=_report(event))
    else:
        progress = CalibrationProgress(stage=event.stage, done=event.done, total=event.total,  # type: ignore[arg-type]
                                       message=event.message)
        body = CalibrationProgressLine(progress=progress)
    return _json_line(body.model_dump(mode="json", exclude_unset=True))


def _json_line(value: Any) -> bytes:
    return (json.dumps(value, separators=(",", ":")) + "\n").encode()


async def _stream(first: Event, events: AsyncGenerator[Event, None]) -> AsyncIterator[bytes]:
    """The lines; a failure after the first one (the status is sent by then) is the last line,
    in the SPEC error shape."""
    try:
        event = first
        while True:
            yield _line(event)
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
    except ApiError as exc:
        yield _json_line(exc.body())
    except Exception:
        log.exception("calibration failed")
        yield _json_line({"error": "calibration failed: internal error", "code": "internal_error"})
    finally:
        await events.aclose()


def _wants_stream(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip().lower() == NDJSON for part in accept.split(","))


async def calibrate(request: Request) -> Response:
    admin(request)
    record = await load_index(request)
    body = CalibrateRequest.parse(await read_json(request, required=False))
    events = services(request).calibration.run(record, body.queries, body.seed, body.apply)
    # The first event comes after the checks: an index that cannot be calibrated (or one already
    # being calibrated) gets its 409 as the status, in the stream mode too.
    first = await anext(events)
    if _wants_stream(request):
        headers = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
        return StreamingResponse(_stream(first, events), media_type=NDJSON, headers=headers)
    last: Event = first
    async for event in events:
        last = event
    assert isinstance(last, calibration.CalibrationReport)
    return model_response(_report(last))
