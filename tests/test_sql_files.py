"""sql/ stays true: the DBA views match the migrations, sql/queries/ matches the statements the code sends."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"


def _normalise(sql: str) -> str:
    sql = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return re.sub(r"\s+", " ", sql).strip()


def test_views_file_is_the_migration_copy() -> None:
    """The newest migration that installs the views holds a frozen copy of sql/dba_views.sql."""
    import importlib.util

    versions = Path(__file__).resolve().parents[1] / "migrations" / "versions"
    copies = []
    for path in sorted(versions.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"m_{path.stem}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "VIEWS"):
            copies.append((module.revision, module.VIEWS))
    assert copies, "no migration installs the DBA views"
    newest = max(copies)[1]
    assert _normalise((SQL_DIR / "dba_views.sql").read_text()) == _normalise(newest)


async def test_views_exist_and_answer(pool: asyncpg.Pool) -> None:
    names = re.findall(r"CREATE OR REPLACE VIEW (\w+)", (SQL_DIR / "dba_views.sql").read_text())
    assert len(names) == 4
    for name in names:
        await pool.fetch(f"SELECT * FROM {name}")  # noqa: S608 - names come from our own file


# --- sql/queries: the statements the service sends ------------------------------------------


def test_query_snapshots_match_the_code() -> None:
    from app.storage import snapshots

    stale = snapshots.stale(SQL_DIR / "queries")
    assert not stale, (
        f"sql/queries differs from the statements the code sends ({', '.join(stale)}): "
        "run `python -m app.storage.snapshots --write` from the checkout root and commit the result"
    )


def test_every_sql_constant_of_storage_is_snapshotted() -> None:
    import textwrap

    from app.storage import apikeys, db, indexes, products, queue, replicas, search, snapshots, storefront

    registered = {snapshots.statement(name)[0] for name in snapshots.STATEMENTS}
    for module in (apikeys, db, indexes, products, queue, replicas, search, storefront):
        for attr, value in vars(module).items():
            if isinstance(value, str) and re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", value):
                assert textwrap.dedent(value).strip() in registered, (
                    f"{module.__name__}.{attr} is not in app.storage.snapshots.STATEMENTS"
                )


async def test_every_snapshotted_statement_prepares_on_the_schema(pool: asyncpg.Pool) -> None:
    """Each statement, rendered for a real index of the migrated schema, parses and plans."""
    import secrets

    from app.storage import indexes, snapshots

    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            record = await indexes.create_index(
                conn,
                name=f"snap-{secrets.token_hex(3)}",
                index_id=secrets.token_hex(8),
                settings={},
                model={},
                dimensions=384,
                vector_type="halfvec",
            )
            for name in snapshots.STATEMENTS:
                sql, _ = snapshots.statement(name, record)
                try:
                    await conn.prepare(sql)
                except asyncpg.PostgresError as exc:
                    raise AssertionError(f"{name}: {exc}\n{sql}") from exc
        finally:
            await tx.rollback()
