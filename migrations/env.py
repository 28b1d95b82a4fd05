"""Alembic environment: runs migrations over asyncpg (the only driver lookalike ships).

The URL comes from `config.attributes["database_url"]` (set by `app.storage.migrate`),
else from LOOKALIKE_DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.storage.db import sqlalchemy_url
from app.storage.schema import metadata

config = context.config
target_metadata = metadata


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("LOOKALIKE_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set LOOKALIKE_DATABASE_URL or use `lookalike migrate`")
    return sqlalchemy_url(url)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
