"""Deployments beyond one process, against a standalone PostgreSQL on loopback (tests/pgcluster.py).

- several `lookalike serve` processes started at once on an empty database;
- reads served by a streaming standby, skipped when it is down or lags, and back when it recovers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.storage import db
from tests.pgcluster import Postgres, cluster, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg() -> Iterator[tuple[Postgres, Postgres]]:
    with cluster(standbys=1) as (primary, standbys):
        yield primary, standbys[0]


def _serve(url: str, port: int, data_dir: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "LOOKALIKE_DATABASE_URL": url,
        "LOOKALIKE_DATA_DIR": str(data_dir),
        "LOOKALIKE_INFERENCE_THREADS": "1",
        **env,
    }
    environment.pop("LOOKALIKE_API_KEY", None)
    environment.pop("LOOKALIKE_DATABASE_READ_URL", None)
    environment.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-format", "text"],
        cwd=REPO_ROOT,
        env=environment,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve on port {port} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"serve on port {port} not healthy in time:\n{log.read_text()[-3000:]}")


def test_three_processes_start_at_once_on_an_empty_database(
    pg: tuple[Postgres, Postgres], tmp_path: Path
) -> None:
    primary, _ = pg
    url = primary.url("lookalike_startup")
    asyncio.run(db.ensure_database(url))  # exists and is empty: no tables, no alembic_version
    ports = [free_port() for _ in range(3)]
    logs = [tmp_path / f"serve{n}.log" for n in range(3)]
    procs = [_serve(url, port, tmp_path / f"data{n}", logs[n]) for n, port in enumerate(ports)]
    try:
        for port, proc, log in zip(ports, procs, logs, strict=True):
            _wait_healthy(port, proc, log)

        async def rows() -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetch("SELECT version_num FROM alembic_version"), await conn.fetch(
                    "SELECT source, revoked_at FROM api_keys"
                )
            finally:
                await conn.close()

        versions, keys = asyncio.run(rows())
        assert len(versions) == 1
        assert [(k["source"], k["revoked_at"]) for k in keys] == [("generated", None)]
        texts = [log.read_text() for log in logs]
        assert sum("generated an admin API key" in t for t in texts) == 1, "the key is printed by one process"
        assert sum("a generated admin API key exists" in t for t in texts) == 2
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_concurrent_migrations_take_turns(pg: tuple[Postgres, Postgres]) -> None:
    """Four migrators released at the same instant (threads; tighter than process start-up)."""
    import threading

    from app.storage import migrate

    primary, _ = pg
    url = primary.url("lookalike_migrators")
    asyncio.run(db.ensure_database(url))
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def migrator() -> None:
        start.wait()
        try:
            migrate.upgrade(url)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=migrator, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    # Without the lock they collide on the first CREATE TABLEs: duplicate-key errors, or a wait forever.
    assert not any(t.is_alive() for t in threads), "a migrator is stuck"
    assert errors == []

    async def versions() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()

    assert len(asyncio.run(versions())) == 1
