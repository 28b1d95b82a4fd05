"""Shared fixtures: a real PostgreSQL with pgvector, built by the real migrations.

With LOOKALIKE_TEST_DATABASE_URL (or LOOKALIKE_DATABASE_URL) set, tests create a
fresh database on that server; otherwise they start the embedded PostgreSQL in
`.data/test-pg` beside the repo. Each test session gets its own database, dropped
at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from app.config import FetchAllowList, Settings
from app.storage import db, migrate
from tests.imageserver import ImageServer

REPO_ROOT = Path(__file__).resolve().parents[1]


def _server_url() -> str:
    url = os.environ.get("LOOKALIKE_TEST_DATABASE_URL") or os.environ.get("LOOKALIKE_DATABASE_URL")
    if url:
        return url
    return db.start_embedded_postgres(REPO_ROOT / ".data" / "test-pg")


def _with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path="/" + name).geturl()


@contextlib.contextmanager
def migrated_database(server_url: str, purpose: str) -> Iterator[str]:
    """A new database on the test server, migrated to head; dropped on exit."""
    name = f"lookalike_{purpose}_{os.getpid()}_{secrets.token_hex(3)}"
    url = _with_database(server_url, name)
    asyncio.run(db.ensure_database(url))
    migrate.upgrade(url)
    try:
        yield url
    finally:
        asyncio.run(db.drop_database(url))


@pytest.fixture(scope="session")
def server_url() -> str:
    return _server_url()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh, fully migrated database for this test session."""
    with migrated_database(server_url, "test") as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(server_url: str) -> Iterator[str]:
    """A fresh, fully migrated database for one module's large data: its tables hold that data
    only (the session's database stays small for every other test), and dropping it is the cleanup."""
    with migrated_database(server_url, "module") as url:
        yield url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, min_size=1, max_size=8, statement_timeout_ms=60_000)
    yield p
    await p.close()


@pytest.fixture()
def fresh_database(server_url: str) -> Iterator[str]:
    """An empty database without migrations, for migration tests."""
    name = f"lookalike_mig_{os.getpid()}_{secrets.token_hex(3)}"
    url = _with_database(server_url, name)
    asyncio.run(db.ensure_database(url))
    yield url
    asyncio.run(db.drop_database(url))


# --- the HTTP API on the test database -------------------------------------------------

ADMIN_KEY = "test-admin-key-0123456789"


def api_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    from dataclasses import replace

    base = Settings(
        database_url=database_url,
        data_dir=data_dir,
        api_key=ADMIN_KEY,
        fetch_allowlist=FetchAllowList.parse("127.0.0.1,localhost"),
        fetch_total_timeout_s=5.0,
        fetch_read_timeout_s=3.0,
        fetch_connect_timeout_s=2.0,
        # One runtime for every app of the suite: `auto` measures ONNX Runtime against OpenVINO at
        # each model load (time, and a choice that varies with the load); both have parity tests.
        inference_runtime="onnxruntime",
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_app(settings: Settings, **kwargs: object) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan included) behind an in-process httpx client."""
    from app.main import create_app

    app = create_app(settings, run_migrations=False, **kwargs)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://lookalike.test", timeout=60
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture(scope="session")
async def api(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    settings = api_settings(database_url, tmp_path_factory.mktemp("data"))
    async with running_app(settings) as client:
        yield client


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="session")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


# --- every `api` response is checked against the OpenAPI description -------------------


class OpenApiValidator:
    """Checks a response (method, path, status, content type, body) against /openapi.json."""

    def __init__(self, doc: dict[str, object]) -> None:
        import re

        self.doc = doc
        paths: dict[str, dict[str, object]] = doc["paths"]  # type: ignore[assignment]
        self.templates: list[tuple[re.Pattern[str], str]] = []
        for template in paths:
            # `{path}` (static files) spans segments; every other parameter is one segment.
            pattern = re.sub(r"\{path\}", r".+", template)
            pattern = re.sub(r"\{[^}/]+\}", r"[^/]+", pattern)
            self.templates.append((re.compile(pattern), template))

    def _operation(self, method: str, path: str) -> tuple[str | None, dict[str, object] | None]:
        for pattern, template in self.templates:
            if pattern.fullmatch(path):
                item: dict[str, object] = self.doc["paths"][template]  # type: ignore[index]
                return template, item.get(method.lower())  # type: ignore[return-value]
        return None, None

    def _schema_check(self, schema: dict[str, object], value: object, where: str) -> None:
        import jsonschema

        # The response schema as a root whose `#/components/...` references resolve in this document.
        root = {**schema, "components": self.doc["components"]}
        validator = jsonschema.Draft202012Validator(root)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            location = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise AssertionError(f"{where}: response does not match /openapi.json at {location}: {error.message}")

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        import json

        where = f"{method} {path} -> {status}"
        template, operation = self._operation(method, path)
        if operation is None:
            # Undocumented path or method: only an error in the documented shape is acceptable.
            if status < 400:
                raise AssertionError(f"{where}: endpoint not described in /openapi.json")
            schema: dict[str, object] | None = {"$ref": "#/components/schemas/Error"}
            media = "application/json"
        else:
            responses: dict[str, dict[str, object]] = operation["responses"]  # type: ignore[assignment]
            response = responses.get(str(status)) or responses.get("default")
            if response is None:
                raise AssertionError(f"{where}: status not described for {method} {template} in /openapi.json")
            content: dict[str, dict[str, object]] = response.get("content") or {}  # type: ignore[assignment]
            if not content:
                return
            # The response's own media type when the document lists several (JSON or NDJSON), else the first.
            given = content_type.split(";")[0].strip()
            media = given if given in content else next(iter(content))
            schema = content[media].get("schema")  # type: ignore[assignment]
        if not content_type.split(";")[0].strip() == media:
            raise AssertionError(f"{where}: content type {content_type!r}, /openapi.json says {media!r}")
        if media == "application/json" and schema is not None:
            self._schema_check(schema, json.loads(body), where)
        if media == "application/x-ndjson" and schema is not None:  # every line is one of the schema's
            for number, line in enumerate(body.decode().splitlines(), start=1):
                self._schema_check(schema, json.loads(line), f"{where} (line {number})")


@pytest.fixture(scope="session")
def openapi_validator() -> OpenApiValidator:
    from app.http.openapi import openapi_document

    return OpenApiValidator(openapi_document())


@pytest.fixture(autouse=True)
def _api_responses_match_openapi(request: pytest.FixtureRequest) -> None:
    """Hooks the session's `api` client (once) so that every response it receives is validated."""
    if "api" not in request.fixturenames:
        return
    client: httpx.AsyncClient = request.getfixturevalue("api")
    if getattr(client, "_openapi_checked", False):
        return
    validator: OpenApiValidator = request.getfixturevalue("openapi_validator")

    async def check(response: httpx.Response) -> None:
        if response.request.method in ("HEAD", "OPTIONS"):
            return  # OPTIONS: CORS preflights, answered by the CORS middleware (tests/test_cors.py)
        await response.aread()
        validator.check(
            response.request.method,
            response.request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
            response.content,
        )

    client.event_hooks["response"].append(check)
    client._openapi_checked = True  # type: ignore[attr-defined]


# --- the real app behind uvicorn on a loopback port (browsers, subprocess clients) ------------


class LiveServer:
    """`create_app(settings)` served by uvicorn in a background thread on 127.0.0.1:<ephemeral>."""

    def __init__(self, settings: Settings) -> None:
        from app.main import create_app

        self.app = create_app(settings, run_migrations=False, start_background_work=False)
        self._server: object = None
        self._thread: object = None

    def __enter__(self) -> LiveServer:
        import threading
        import time

        import uvicorn

        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="live-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("live server did not start")
            time.sleep(0.05)
        self._server, self._thread = server, thread
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        server, thread = self._server, self._thread
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def live_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = api_settings(database_url, tmp_path_factory.mktemp("live"))
    with LiveServer(settings) as server:
        yield server


# --- a real browser (tests/browser.py) -----------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless chromium, launched once per test module that asks for it."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
