"""CORS (SPEC "Browsers"): Starlette's own CORSMiddleware, one configuration for the read
endpoints and one for everything else, chosen by path.

Read endpoints (search, reverse-image-search, get-documents, collections,
recommendations/*) are called straight from storefronts: their origins are
`LOOKALIKE_CORS_ORIGINS` (default `*`; the index id is public by design) with the
`x-marqo-index-id` and `content-type` headers. Admin endpoints answer only the origins in
`LOOKALIKE_ADMIN_CORS_ORIGINS` (default none: no CORS headers at all, so a browser page on
another origin can neither preflight nor read them).
"""

from __future__ import annotations

import re

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

READ_PATH = re.compile(
    r"^/api/v1/indexes/[^/]+/(?:search|reverse-image-search|get-documents|collections|recommendations/[^/]+)/?$"
)
READ_HEADERS = ["x-marqo-index-id", "content-type"]
ADMIN_HEADERS = ["authorization", "content-type"]
# Browsers may cache a preflight this long (seconds).
PREFLIGHT_MAX_AGE = 600


def is_read_path(path: str) -> bool:
    return READ_PATH.match(path) is not None


class PathCORSMiddleware:
    """Dispatches each HTTP request to the read or the admin CORS configuration by its path."""

    def __init__(self, app: ASGIApp, *, read_origins: tuple[str, ...], admin_origins: tuple[str, ...]) -> None:
        self.app = app
        self.read: ASGIApp = CORSMiddleware(
            app,
            allow_origins=list(read_origins),
            allow_methods=["GET", "POST"],
            allow_headers=READ_HEADERS,
            expose_headers=["server-timing", "retry-after"],
            max_age=PREFLIGHT_MAX_AGE,
        )
        self.admin: ASGIApp = (
            CORSMiddleware(
                app,
                allow_origins=list(admin_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=ADMIN_HEADERS,
                max_age=PREFLIGHT_MAX_AGE,
            )
            if admin_origins
            else app
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = self.read if is_read_path(scope.get("path", "")) else self.admin
        await target(scope, receive, send)
