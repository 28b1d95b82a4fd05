"""Where statements run: the primary, or a PostgreSQL streaming replica whose lag is bounded.

`Database.primary` takes every write and the admin reads that must see them.
`Database.read(fn)` runs a read-only statement group on a usable replica (round robin)
and falls back to the primary when none is usable, or when the chosen one fails
(connection lost, or an object it has not replayed yet, such as a just-created index's
vector table). A background checker measures each replica every
`replica_check_interval_s`:

- **lag**, without trusting `pg_last_xact_replay_timestamp()` alone (on an idle primary
  the last replayed commit is old although the replica is current): the checker keeps a
  short history of the primary's `pg_current_wal_lsn()` and when it was first seen; a
  replica's lag is how long ago the primary had WAL that the replica has still not
  replayed (`pg_last_wal_replay_lsn()`), 0 when it has replayed everything the primary
  had; the byte distance is reported too;
- **answering**: a replica that errors or does not answer within the check timeout is
  `down`; one lagging more than `replica_max_lag_s` is `lagging`; both are skipped until
  a later check finds them `ok`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from app.storage.db import create_pool, redact_url

log = logging.getLogger("lookalike.replicas")

T = TypeVar("T")

# A replica read that fails with one of these is retried on the primary (reads are idempotent).
_FALLBACK_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
    # the statement names a table the replica has not replayed yet (an index created a moment ago)
    asyncpg.UndefinedTableError,
    # a standby cancels a query whose rows replay must remove (max_standby_streaming_delay)
    asyncpg.SerializationError,
)
_NOT_YET_REPLAYED = (asyncpg.UndefinedTableError, asyncpg.SerializationError)

REPLICA_STATUS = """
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END AS paused,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age_s
"""


PRIMARY_WAL_POSITION = "SELECT pg_current_wal_lsn()::text"


def parse_lsn(text: str | None) -> int | None:
    """`16/B374D848` -> a byte position."""
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass
class Replica:
    url: str
    pool: asyncpg.Pool
    state: str = "unknown"  # ok | lagging | down | unknown (not checked yet)
    lag_s: float | None = None
    lag_bytes: int | None = None
    replay_paused: bool = False
    error: str | None = None
    checked_at: float | None = None  # time.time() of the last check
    reads: int = 0

    @property
    def label(self) -> str:
        """The URL with its password replaced (safe for /health, /metrics and logs)."""
        return redact_url(self.url)

    @property
    def usable(self) -> bool:
        return self.state == "ok"

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.label,
            "state": self.state,
            "lagSeconds": None if self.lag_s is None else round(self.lag_s, 3),
            "lagBytes": self.lag_bytes,
            "replayPaused": self.replay_paused,
            "reads": self.reads,
            "error": self.error,
        }


@dataclass
class PrimaryWal:
    """When each primary WAL position was first seen: the clock replica lag is measured against."""

    keep_s: float
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def note(self, now: float, lsn: int) -> None:
        if not self.samples or lsn > self.samples[-1][1]:
            self.samples.append((now, lsn))
        while len(self.samples) > 1 and now - self.samples[1][0] > self.keep_s:
            self.samples.popleft()  # the oldest sample older than keep_s stays as the floor

    @property
    def latest(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    def lag_s(self, now: float, replayed: int, replay_age_s: float | None) -> float:
        """Seconds since the primary first had WAL beyond `replayed`; 0 when the replica has it all."""
        for index, (seen, lsn) in enumerate(self.samples):
            if lsn > replayed:
                lag = now - seen
                if index == 0 and replay_age_s is not None:
                    # behind the oldest position we know of: it may be far older than our history
                    lag = max(lag, replay_age_s)
                return max(0.0, lag)
        return 0.0


class Database:
    """The primary pool, the replica pools, and the choice between them for each read."""

    def __init__(
        self,
        primary: asyncpg.Pool,
        replicas: list[Replica],
        *,
        max_lag_s: float,
        check_interval_s: float,
        check_timeout_s: float,
    ) -> None:
        self.primary = primary
        self.replicas = replicas
        self.max_lag_s = max_lag_s
        self.check_interval_s = check_interval_s
        self.check_timeout_s = check_timeout_s
        self.primary_reads = 0
        self._wal = PrimaryWal(keep_s=max(60.0, 10 * max_lag_s))
        self._turn = itertools.count()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        primary: asyncpg.Pool,
        read_urls: list[str],
        *,
        max_size: int,
        statement_timeout_ms: int,
        max_lag_s: float,
        check_interval_s: float,
        check_timeout_s: float,
    ) -> Database:
        replicas = []
        for url in read_urls:
            # min_size 0: a replica that is down at start-up must not stop the service starting
            pool = await create_pool(url, min_size=0, max_size=max_size, statement_timeout_ms=statement_timeout_ms)
            replicas.append(Replica(url, pool))
        database = cls(
            primary,
            replicas,
            max_lag_s=max_lag_s,
            check_interval_s=check_interval_s,
            check_timeout_s=check_timeout_s,
        )
        if replicas:
            await database.check_once()
        return database

    # -- routing ---------------------------------------------------------------------------

    def _pick(self) -> Replica | None:
        usable = [r for r in self.replicas if r.usable]
        if not usable:
            return None
        return usable[next(self._turn) % len(usable)]

    @property
    def reads_from(self) -> str:
        """`replicas` while at least one replica is usable, else `primary`."""
        return "replicas" if any(r.usable for r in self.replicas) else "primary"

    async def read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn(conn)` in a read-only transaction on a usable replica, else on the primary."""
        replica = self._pick()
        if replica is not None:
            try:
                async with replica.pool.acquire(timeout=self.check_timeout_s) as conn, conn.transaction(
                    readonly=True
                ):
                    result = await fn(conn)
            except _FALLBACK_ERRORS as exc:
                if not isinstance(exc, _NOT_YET_REPLAYED):
                    self._mark_down(replica, exc)
            else:
                replica.reads += 1
                return result
        self.primary_reads += 1
        async with self.primary.acquire() as conn, conn.transaction(readonly=True):
            return await fn(conn)

    def _mark_down(self, replica: Replica, exc: BaseException) -> None:
        if replica.state != "down":
            log.warning("replica %s failed a read (%s); reads go elsewhere until it recovers",
                        replica.label, exc.__class__.__name__)
        replica.state = "down"
        replica.error = exc.__class__.__name__

    # -- health ----------------------------------------------------------------------------

    async def check_once(self) -> None:
        now = time.monotonic()
        try:
            lsn = await asyncio.wait_for(
                self.primary.fetchval(PRIMARY_WAL_POSITION), self.check_timeout_s
            )
            position = parse_lsn(lsn)
            if position is not None:
                self._wal.note(now, position)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # primary unreachable: replicas are judged against the positions seen so far
        await asyncio.gather(*(self._check(replica, now) for replica in self.replicas))

    async def _check(self, replica: Replica, now: float) -> None:
        before = replica.state
        try:
            row = await asyncio.wait_for(self._status(replica), self.check_timeout_s)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            replica.state, replica.error = "down", exc.__class__.__name__
            replica.lag_s = replica.lag_bytes = None
        else:
            replica.error = None
            replica.replay_paused = bool(row["paused"])
            replayed = parse_lsn(row["replay_lsn"])
            if not row["in_recovery"] or replayed is None:
                replica.lag_s, replica.lag_bytes = 0.0, 0  # not a standby: its data is its own
            else:
                replica.lag_s = self._wal.lag_s(now, replayed, row["replay_age_s"])
                latest = self._wal.latest
                replica.lag_bytes = None if latest is None else max(0, latest - replayed)
            replica.state = "ok" if replica.lag_s <= self.max_lag_s else "lagging"
        replica.checked_at = time.time()
        if replica.state != before:
            # the error says why a replica went down (TimeoutError: no answer within the check timeout)
            log.info("replica %s: %s -> %s (lag %s s%s)", replica.label, before, replica.state,
                     None if replica.lag_s is None else round(replica.lag_s, 2),
                     "" if replica.error is None else f", {replica.error}")

    async def _status(self, replica: Replica) -> asyncpg.Record:
        async with replica.pool.acquire(timeout=self.check_timeout_s) as conn:
            row = await conn.fetchrow(REPLICA_STATUS)
        assert row is not None
        return row

    def describe(self) -> list[dict[str, Any]]:
        return [replica.describe() for replica in self.replicas]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.replicas and self._task is None:
            self._task = asyncio.create_task(self._check_loop(), name="lookalike-replica-checks")

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the checker must outlive any one bad check
                log.exception("replica check failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for replica in self.replicas:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(replica.pool.close(), 5)
