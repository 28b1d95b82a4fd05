"""Shared fixtures: a real PostgreSQL with pgvector, built by the real migrations.

With LOOKALIKE_TEST_DATABASE_URL (or LOOKALIKE_DATABASE_URL) set, tests create a
fresh database on that server; otherwise they start the embedded PostgreSQL in
`.data/test-pg` beside the repo. Each test session gets its own database, dropped
at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from app.storage import db, migrate

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
