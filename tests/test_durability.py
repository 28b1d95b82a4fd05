"""An acknowledged product survives SIGKILL of the service; the embedded default keeps data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ADMIN, ADMIN_KEY
from tests.helpers import TEST_MODEL, data_url, product, product_image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"service exited: {proc.stderr.read().decode()[-3000:] if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("service did not become healthy")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update({"LOOKALIKE_API_KEY": ADMIN_KEY, "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def test_acknowledged_product_survives_sigkill(database_url: str) -> None:
    port = _free_port()
    env = _env(LOOKALIKE_DATABASE_URL=database_url)
    base = f"http://127.0.0.1:{port}/api/v1/indexes/durable"
    proc = _start(env, port)
    try:
        r = httpx.post(base, json={"model": TEST_MODEL}, headers=ADMIN, timeout=60)
        assert r.status_code in (200, 409), r.text
        r = httpx.post(
            base + "/documents",
            json={"documents": [product("kept", data_url(product_image(5)))]},
            headers=ADMIN,
            timeout=60,
        )
        assert r.json()["items"] == [{"_id": "kept", "status": 200}]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = _start(env, port)
    try:
        r = httpx.post(base + "/get-documents", json={"documentIds": ["kept"]}, headers=ADMIN, timeout=30)
        assert r.json()["results"][0]["_found"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_embedded_database_persists_across_restarts(tmp_path: Path) -> None:
    """No LOOKALIKE_DATABASE_URL: embedded PostgreSQL in the data dir, stopped on exit, data kept."""
    port = _free_port()
    env = _env(LOOKALIKE_DATA_DIR=str(tmp_path / "data"))
    proc = _start(env, port)
    try:
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/indexes/persist",
            json={"model": TEST_MODEL},
            headers=ADMIN,
            timeout=60,
        )
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean exit too.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    pgdata = tmp_path / "data" / "pgdata"
    assert (pgdata / "PG_VERSION").exists()
    deadline = time.monotonic() + 15
    while (pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (pgdata / "postmaster.pid").exists(), "embedded PostgreSQL was not stopped on exit"
    proc = _start(env, port)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/indexes", headers=ADMIN, timeout=30)
        assert [i["indexName"] for i in r.json()["results"]] == ["persist"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
