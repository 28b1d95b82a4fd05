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


# -- read replicas ------------------------------------------------------------------------------


async def _table_scans(server: Postgres, database: str) -> int:
    """Scans of `database`'s own tables that `server` has counted (pg_stat_user_tables).

    Only statements that read lookalike's tables move it: the replica checker's status query
    and this query (system views) do not, unlike pg_stat_database.xact_commit, which every
    check commit moves too. A backend publishes its counts when a transaction ends at least
    1 s after its last flush, or after 10 s idle (PGSTAT_IDLE_INTERVAL), so callers poll.
    """
    conn = await asyncpg.connect(server.url(database))
    try:
        value = await conn.fetchval(
            "SELECT sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)) FROM pg_stat_user_tables"
        )
        return int(value or 0)
    finally:
        await conn.close()


async def _eventually(check, within_s: float = 15.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `await check()` is truthy."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within_s:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_reads_follow_the_healthy_replica(pg: tuple[Postgres, Postgres], tmp_path: Path) -> None:
    from app.storage import migrate
    from tests.conftest import ADMIN, api_settings, running_app
    from tests.helpers import TEST_MODEL, data_url, product, product_image

    primary, standby = pg
    name = "lookalike_reads"
    await db.ensure_database(primary.url(name))
    await asyncio.to_thread(migrate.upgrade, primary.url(name))
    settings = api_settings(
        primary.url(name),
        tmp_path,
        database_read_url=standby.url(name),
        replica_max_lag_s=1.0,
        replica_check_interval_s=0.2,
        # generous: a check that misses it marks the replica down, and a loaded CI machine can
        # stall a trivial query for a second; a stopped standby is seen by its refused
        # connections at once, which the 5 s bound on noticing it below holds to
        replica_check_timeout_s=5.0,
    )
    async with running_app(settings) as api:
        r = await api.post("/api/v1/indexes/shop", json={"model": TEST_MODEL}, headers=ADMIN)
        assert r.status_code == 200, r.text
        read = {"x-marqo-index-id": r.json()["indexId"]}
        docs = [product(f"p{i}", data_url(product_image(i)), productTitle=f"red mug {i}") for i in range(6)]
        r = await api.post("/api/v1/indexes/shop/documents", json={"documents": docs}, headers=ADMIN)
        assert r.status_code == 200 and not r.json()["errors"], r.text
        query = data_url(product_image(3))

        async def health() -> dict:
            return (await api.get("/health")).json()

        async def searches(n: int) -> None:
            for i in range(n):
                body = [{"q": "red mug"}, {"q": "*", "filter": "price:[1 TO 100]"}, {"q": query}][i % 3]
                r = await api.post("/api/v1/indexes/shop/search", json=body, headers=read)
                assert r.status_code == 200, r.text
                assert r.json()["hits"], body

        async def replica_state(state: str) -> bool:
            return (await health())["replicas"][0]["state"] == state

        async def searches_run_on_the_standby(n: int) -> None:
            """`n` searches answered by the standby: the service counts them as replica reads, and the
            standby's own statistics count at least one scan of lookalike's tables for each."""
            scans, reads = await _table_scans(standby, name), (await health())["replicas"][0]["reads"]
            await searches(n)
            assert (await health())["replicas"][0]["reads"] == reads + n

            async def standby_scanned() -> bool:
                return await _table_scans(standby, name) - scans >= n

            await _eventually(standby_scanned, within_s=20)  # statistics are published late, see _table_scans

        # the standby has replayed the catalog: reads go there (its own scan counters grow)
        await _eventually(lambda: replica_state("ok"))
        await _eventually(lambda: _standby_has(standby, name, 6))
        await searches_run_on_the_standby(30)
        h = await health()
        assert h["reads"] == "replicas" and h["replicas"][0]["url"] == standby.url(name)
        metrics = (await api.get("/metrics")).text
        assert f'lookalike_replica_usable{{replica="{standby.url(name)}"}} 1.0' in metrics

        # an idle primary does not make the standby look stale (its last replayed commit is old)
        await asyncio.sleep(2.5)
        assert (await health())["replicas"][0]["state"] == "ok"

        # standby stopped: every search still answers, from the primary, and health says so
        await asyncio.to_thread(standby.stop, "immediate")
        await searches(6)
        assert await _eventually(lambda: replica_state("down"), within_s=5) < 5
        assert (await health())["reads"] == "primary"
        await searches(6)

        # standby back: reads return to it
        await asyncio.to_thread(standby.start)
        await _eventually(lambda: replica_state("ok"), within_s=20)
        await searches_run_on_the_standby(9)

        # replay paused while the primary takes writes: past the 1 s bound, reads move to the primary
        paused = await asyncpg.connect(standby.url("postgres"))
        try:
            await paused.execute("SELECT pg_wal_replay_pause()")
            more = [product(f"q{i}", data_url(product_image(100 + i))) for i in range(3)]
            r = await api.post("/api/v1/indexes/shop/documents", json={"documents": more}, headers=ADMIN)
            assert r.status_code == 200 and not r.json()["errors"]
            await _eventually(lambda: replica_state("lagging"), within_s=10)
            h = await health()
            assert h["reads"] == "primary" and h["replicas"][0]["lagSeconds"] > 1.0
            assert h["replicas"][0]["lagBytes"] > 0 and h["replicas"][0]["replayPaused"]
            reads_before = h["replicas"][0]["reads"]
            await searches(6)
            assert (await health())["replicas"][0]["reads"] == reads_before
            await paused.execute("SELECT pg_wal_replay_resume()")
        finally:
            await paused.close()
        await _eventually(lambda: replica_state("ok"), within_s=10)
        h = await health()
        await searches(3)
        assert (await health())["replicas"][0]["reads"] == h["replicas"][0]["reads"] + 3


async def _standby_has(standby: Postgres, database: str, products: int) -> bool:
    conn = await asyncpg.connect(standby.url(database))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM products")) >= products
    finally:
        await conn.close()
