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


async def _drop_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(_with_database(server_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def server_url() -> str:
    return _server_url()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh, fully migrated database for this test session."""
    name = f"lookalike_test_{os.getpid()}_{secrets.token_hex(3)}"
    url = _with_database(server_url, name)
    asyncio.run(db.ensure_database(url))
    migrate.upgrade(url)
    yield url
    asyncio.run(_drop_database(server_url, name))


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
    asyncio.run(_drop_database(server_url, name))


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
