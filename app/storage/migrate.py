"""Apply Alembic migrations programmatically (`lookalike migrate`, app start-up, tests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config

log = logging.getLogger("lookalike.migrate")

# The PostgreSQL advisory lock every lookalike process holds while it migrates: the bytes of
# "lookalik" as a bigint. Processes started together (compose --scale, Kubernetes replicas)
# take turns; the later ones find the schema current and apply nothing. A DBA sees a
# migrating process in pg_locks: locktype advisory, classid 1819242347, objid 1634494827, objsubid 1.
MIGRATION_LOCK_KEY = 7813586385497778539

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `app` package


def migrations_dir() -> Path:
    """The Alembic tree: inside the installed package (a wheel ships the top-level `migrations/`
    as `app/_migrations`, see setup.py), else the `migrations/` beside `app/` in a checkout."""
    installed = _PACKAGE_DIR / "_migrations"
    if (installed / "env.py").is_file():
        return installed
    return _PACKAGE_DIR.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    # Configured in code: no alembic.ini needed at run time (that file is for `alembic revision`).
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["database_url"] = database_url
    return cfg


def _in_thread(fn, *args) -> None:  # type: ignore[no-untyped-def]
    """Alembic's async env calls asyncio.run(); keep it off any running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        fn(*args)
        return
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


async def _under_migration_lock(database_url: str, step: Callable[[], None]) -> None:
    """Run `step` while holding MIGRATION_LOCK_KEY on a dedicated connection.

    A session-level lock (not a transaction's) so that it also covers migrations that
    commit in several steps; it is released when the connection closes, so a process
    that dies while migrating frees it at once.
    """
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
            log.info("another lookalike process is migrating this database; waiting for it")
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        # Alembic's env runs its own event loop: a worker thread keeps it off this one.
        await asyncio.to_thread(step)
    finally:
        await conn.close()  # releases the lock


def _locked(database_url: str, fn: Callable[..., None], *args: object) -> None:
    asyncio.run(_under_migration_lock(database_url, lambda: fn(*args)))


def upgrade(database_url: str, revision: str = "head") -> None:
    _in_thread(_locked, database_url, command.upgrade, alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    _in_thread(_locked, database_url, command.downgrade, alembic_config(database_url), revision)
