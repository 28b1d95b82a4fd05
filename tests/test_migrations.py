"""The schema exists only through Alembic: empty -> head -> base -> head."""

from __future__ import annotations

import asyncio

import asyncpg

from app.storage import migrate


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


def test_upgrade_downgrade_upgrade(fresh_database: str) -> None:
    assert asyncio.run(_tables(fresh_database)) == set()
    migrate.upgrade(fresh_database)
    tables = asyncio.run(_tables(fresh_database))
    assert {"indexes", "products", "local_features", "api_keys", "alembic_version"} <= tables
    migrate.downgrade(fresh_database, "base")
    assert asyncio.run(_tables(fresh_database)) == {"alembic_version"}
    migrate.upgrade(fresh_database)
    assert {"indexes", "products"} <= asyncio.run(_tables(fresh_database))
