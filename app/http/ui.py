"""The web page (/ui), the API docs page (/docs: the vendored Swagger UI) and their static files.

Plain HTML/JS, no build step, nothing loaded from outside this server."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The pages run only their own scripts and talk only to this server; product images may come
# from any http(s) host or be data URLs, so img-src is the one open door.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data: blob: http: https:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _page(name: str) -> Response:
    return FileResponse(STATIC_DIR / name, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


async def ui_page(request: Request) -> Response:
    return _page("index.html")


async def docs_page(request: Request) -> Response:
    return _page("swagger-ui.html")


async def root(request: Request) -> Response:
    return RedirectResponse("/ui", status_code=307)


def routes() -> list[Route | Mount]:
    return [
        Route("/", root, methods=["GET"]),
        Route("/ui", ui_page, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
