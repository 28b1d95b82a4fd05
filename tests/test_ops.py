"""Operations: request ids, JSON access log, Prometheus metrics, /health, graceful shutdown, deployment files."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.logs import JsonFormatter
from tests.conftest import ADMIN, ADMIN_KEY, REPO_ROOT
from tests.helpers import TEST_MODEL, data_url, product, product_image
from tests.imageserver import ImageServer

BASE = "/api/v1/indexes/ops"


@pytest.fixture(scope="module")
async def ops_index(api: httpx.AsyncClient) -> dict[str, str]:
    await api.delete(BASE, headers=ADMIN)
    r = await api.post(BASE, json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}, headers=ADMIN)
    assert r.status_code == 200, r.text
    index_id = r.json()["indexId"]
    docs = [product(f"o{i}", data_url(product_image(100 + i, 64)), brand="Acme") for i in range(4)]
    r = await api.post(BASE + "/documents", json={"documents": docs}, headers=ADMIN)
    assert r.json()["errors"] is False, r.text
    return {"x-marqo-index-id": index_id}


async def test_request_id_assigned_echoed_or_replaced(api: httpx.AsyncClient) -> None:
    generated = (await api.get("/health")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert (await api.get("/health", headers={"x-request-id": "abc-123.X"})).headers["x-request-id"] == "abc-123.X"
    # Not an id (could inject into log lines): replaced by a fresh one.
    for bad in ('x"}\n{"evil": 1', "a" * 500):
        echoed = (await api.get("/health", headers={"x-request-id": bad})).headers["x-request-id"]
        assert echoed != bad and re.fullmatch(r"[0-9a-f]{32}", echoed)


async def test_one_json_access_line_per_request_without_credentials(
    api: httpx.AsyncClient, ops_index: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    headers = {**ops_index, "Authorization": f"Bearer {ADMIN_KEY}", "x-request-id": "req-42"}
    with caplog.at_level(logging.INFO, logger="lookalike.access"):
        r = await api.post(BASE + "/search?secret=q", json={"q": "*", "filter": "brand:Acme"}, headers=headers)
    assert r.status_code == 200
    records = [rec for rec in caplog.records if rec.name == "lookalike.access"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["request_id"] == "req-42"
    assert entry["method"] == "POST"
    assert entry["route"] == "/api/v1/indexes/{index_name}/search"
    assert entry["path"] == BASE + "/search"
    assert entry["status"] == 200 and entry["duration_ms"] >= 0
    assert ADMIN_KEY not in line and ops_index["x-marqo-index-id"] not in line and "secret" not in line


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_latency_by_route_template_stages_queue_and_pool(
    api: httpx.AsyncClient, ops_index: dict[str, str]
) -> None:
    before = _samples((await api.get("/metrics")).text)
    image = data_url(product_image(101, 64))
    assert (await api.post(BASE + "/search", json={"q": image}, headers=ops_index)).status_code == 200
    r = await api.post(BASE + "/reverse-image-search", json={"q": image}, headers=ops_index)
    assert r.status_code == 200
    assert (await api.post(BASE + "/search", json={"filter": "("}, headers=ops_index)).status_code == 400
    scrape = await api.get("/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    after = _samples(scrape.text)
    count = "lookalike_http_request_duration_seconds_count"
    route = "/api/v1/indexes/{index_name}/search"
    for status, n in (("200", 1), ("400", 1)):
        delta = _value(after, count, method="POST", route=route, status=status) - _value(
            before, count, method="POST", route=route, status=status
        )
        assert delta == n, status
    # Raw paths never become labels (cardinality, index names).
    assert not any("/ops/" in dict(labels).get("route", "") for _, labels in after)
    stages = "lookalike_search_stage_seconds_count"
    for endpoint in ("search", "reverse-image-search"):
        for stage in ("decode", "embed"):
            assert _value(after, stages, endpoint=endpoint, stage=stage) > _value(
                before, stages, endpoint=endpoint, stage=stage
            ), (endpoint, stage)
    assert ("lookalike_embed_queue_depth", frozenset()) in after
    assert _value(after, "lookalike_db_pool_size") >= 1
    assert _value(after, "lookalike_db_pool_max") >= _value(after, "lookalike_db_pool_size")
    assert _value(after, "lookalike_models_loaded") >= 1
    assert _value(after, "lookalike_embed_batches_total") >= 1


async def test_health_reports_database_models_and_pool(api: httpx.AsyncClient, ops_index: dict[str, str]) -> None:
    body = (await api.get("/health")).json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert "vit_tiny_patch16_224" in body["models"]["loaded"]
    assert body["models"]["embedQueueDepth"] == 0
    assert body["pool"]["size"] >= 1


# --- graceful shutdown --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_in_flight_request_completes_on_sigterm(database_url: str) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(
        LOOKALIKE_DATABASE_URL=database_url,
        LOOKALIKE_API_KEY=ADMIN_KEY,
        LOOKALIKE_IMAGE_FETCH_ALLOWLIST="127.0.0.1",
        PYTHONUNBUFFERED="1",
    )
    api = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--graceful-timeout", "20"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        text=True,
    )
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "".join(stderr_lines)[-3000:]
            assert time.monotonic() < deadline, "service did not start"
            try:
                if httpx.get(api + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        base = api + "/api/v1/indexes/graceful"
        httpx.delete(base, headers=ADMIN, timeout=30)
        index_id = httpx.post(base, json={"model": TEST_MODEL}, headers=ADMIN, timeout=60).json()["indexId"]
        with ImageServer() as images:
            # An image that takes ~1.5 s to arrive keeps the search in flight across the signal.
            slow = images.add_slow("/slow.jpg", product_image(7, 64), delay_s=0.1, chunk_size=max(1, 2000 // 15))
            result: dict[str, object] = {}

            def search() -> None:
                try:
                    r = httpx.post(
                        base + "/search", json={"q": slow}, headers={"x-marqo-index-id": index_id}, timeout=30
                    )
                    result["status"], result["body"] = r.status_code, r.json()
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    result["error"] = repr(exc)

            client = threading.Thread(target=search)
            client.start()
            deadline = time.monotonic() + 10
            while "/slow.jpg" not in images.requested_paths():
                assert time.monotonic() < deadline, "the search never started fetching"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.HTTPError):  # no new connections once shutdown began
                httpx.get(api + "/health", timeout=2)
            client.join(timeout=30)
        assert result.get("status") == 200, result
        assert result["body"]["hits"] == []  # type: ignore[index]
        # uvicorn re-raises SIGTERM after its graceful shutdown, so -15 is a clean exit too.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    # `lookalike serve` logs JSON lines; the search has its access line with route and status.
    entries = [json.loads(line) for line in stderr_lines if line.startswith("{")]
    access = [e for e in entries if e.get("logger") == "lookalike.access"]
    assert any(e["route"] == "/api/v1/indexes/{index_name}/search" and e["status"] == 200 for e in access)
    assert all(ADMIN_KEY not in line and index_id not in line for line in stderr_lines)


# --- deployment files ---------------------------------------------------------------------------


def test_docker_compose_runs_migrations_before_the_api() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["db"]["image"].startswith("pgvector/pgvector:pg1")
    assert "migrate" in services["migrate"]["command"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    api = services["api"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "serve" in api["command"]
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert "LOOKALIKE_DATABASE_URL" in api["environment"]
    grace = int(str(api["stop_grace_period"]).rstrip("s"))
    assert grace > 30  # longer than serve's default --graceful-timeout


def test_docker_compose_has_workers_and_an_optional_streaming_replica() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    api, worker, replica, primary = services["api"], services["worker"], services["replica"], services["db"]
    assert worker["command"] == ["lookalike", "worker"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["LOOKALIKE_DATABASE_URL"] == api["environment"]["LOOKALIKE_DATABASE_URL"]
    assert "worker" not in services["worker"].get("profiles", [])  # always on
    assert {"LOOKALIKE_INGEST_MODE", "LOOKALIKE_DATABASE_READ_URL"} <= set(api["environment"])
    # the replica: same image as the primary, only with the profile, cloned by pg_basebackup -R
    assert replica["profiles"] == ["replica"] and replica["image"] == primary["image"]
    assert replica["depends_on"]["db"]["condition"] == "service_healthy"
    assert replica["user"] == "postgres"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in replica["volumes"]}
    script = (REPO_ROOT / mounts[replica["entrypoint"][-1]]).read_text()
    assert "pg_basebackup -h db" in script and " -R " in script and "exec postgres" in script
    assert "replicadata" in compose["volumes"]
    init = [m for m in primary["volumes"] if "docker-entrypoint-initdb.d" in m]
    assert init and "host replication" in (REPO_ROOT / init[0].split(":")[0]).read_text()

