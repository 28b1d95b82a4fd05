"""Admission control: bounded work in flight, a bounded wait, then 503 with Retry-After.

Without it, overload turns into unbounded queues: every request that arrives is
parsed, holds its body in memory and waits for the embedder or a database
connection, so latency and memory grow for as long as the overload lasts and
clients time out on requests the server still finishes. Here each API request
passes a gate first, before its body is read:

- `heavy` requests (add/update documents, reverse image search, /search with
  an image, calibrate: fetching, decoding, embedding, feature matching) and `light` ones
  (the other API calls: text search, browse, reads, admin) have separate gates,
  so cheap reads stay fast while images queue;
- a gate lets `in_flight` requests run at once and up to `queue` more wait, each
  at most `queue_timeout_s`; anything beyond is answered at once with
  `503 {"error", "code": "overloaded"}` and `Retry-After`;
- health, metrics, the OpenAPI document and static pages are never gated.

Whether a `/search` is an image query is in its body: a body over 8 KiB (a data
URL) counts as heavy unread; a smaller one is read (cheap, bounded) and its `q`
decides; the bytes are then replayed to the handler unchanged.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.contract.search import is_image_query

_API_PREFIX = "/api/"
_PEEK_BYTES = 8 * 1024


@dataclass(frozen=True)
class AdmissionLimits:
    # Measured with benchmarks.load (200 clients, 2 cores): a heavy queue of 64 only added ~4 s of
    # waiting to every admitted image request. 8 + 40 admits the 32 concurrent image clients of
    # benchmarks.e2e_bench without shedding (8 + 16 shed 24-78 of 160 requests there), and still
    # sheds at once under the 200-client overload.
    heavy_in_flight: int = 8
    heavy_queue: int = 40
    light_in_flight: int = 32
    light_queue: int = 256
    # long enough for a full heavy queue to drain on 2 cores with the default model (~4 reverse
    # searches/s): 48 requests ahead take ~12 s at worst; beyond it the client is better told 503
    queue_timeout_s: float = 15.0
    retry_after_s: int = 1


@dataclass
class Gate:
    """At most `in_flight` holders, at most `queue` waiters; counts what it admitted and shed."""

    name: str
    in_flight: int
    queue: int
    timeout_s: float
    active: int = 0
    waiting: int = 0
    admitted: int = 0
    rejected: int = 0
    peak_waiting: int = 0
    _semaphore: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._semaphore = asyncio.Semaphore(max(1, self.in_flight))

    async def enter(self) -> bool:
        if self._semaphore.locked() and self.waiting >= self.queue:
            self.rejected += 1
            return False
        self.waiting += 1
        self.peak_waiting = max(self.peak_waiting, self.waiting)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._semaphore.acquire()
        except TimeoutError:
            self.rejected += 1
            return False
        finally:
            self.waiting -= 1
        self.active += 1
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.active -= 1
        self._semaphore.release()


class Admission:
    """The gates of one application (kept on `app.state.admission` for metrics and tests)."""

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        lim = self.limits
        self.heavy = Gate("heavy", lim.heavy_in_flight, lim.heavy_queue, lim.queue_timeout_s)
        self.light = Gate("light", lim.light_in_flight, lim.light_queue, lim.queue_timeout_s)

    def gate_for(self, method: str, path: str, search_is_image: bool = False) -> Gate | None:
        if not path.startswith(_API_PREFIX):
            return None
        if path.endswith("/reverse-image-search") or (path.endswith("/documents") and method in ("POST", "PATCH")):
            return self.heavy
        if path.endswith("/search") and search_is_image:
            return self.heavy
        if path.endswith("/calibrate"):  # wild photos, inference and matching for minutes: one heavy slot
            return self.heavy
        return self.light


def _is_search(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"].startswith(_API_PREFIX) and scope["path"].endswith("/search")


async def _peek_search(scope: Scope, receive: Receive) -> tuple[bool, Receive]:
    """(is an image query, a receive that replays what was read) for a /search request."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > _PEEK_BYTES:
        return True, receive
    read: list[Message] = []
    size = 0
    more = True
    while more and size <= _PEEK_BYTES:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        more = message.get("more_body", False)

    async def replay() -> Message:
        return read.pop(0) if read else await receive()

    if more or size > _PEEK_BYTES:
        return True, replay
    body = b"".join(m.get("body", b"") for m in read if m["type"] == "http.request")
    try:
        q = json.loads(body).get("q")
    except (ValueError, AttributeError, RecursionError):
        return False, replay  # the handler answers 400
    return isinstance(q, str) and is_image_query(q), replay


class AdmissionMiddleware:
    """Pure ASGI middleware (no body buffering) in front of the routes."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        image = False
        if _is_search(scope):
            image, receive = await _peek_search(scope, receive)
        gate = self.admission.gate_for(scope["method"], scope["path"], image)
        if gate is None:
            await self.app(scope, receive, send)
            return
        if not await gate.enter():
            retry = str(self.admission.limits.retry_after_s)
            response = JSONResponse(
                {"error": f"the server is busy; retry in {retry} s", "code": "overloaded"},
                status_code=503,
                headers={"Retry-After": retry},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.leave()
