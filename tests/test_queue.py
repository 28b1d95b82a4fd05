"""Queue mode (LOOKALIKE_INGEST_MODE=queue) and `lookalike worker`.

The service stores products pending and answers 202; they are not searchable until a
worker has embedded them; workers share the queue through PostgreSQL (SKIP LOCKED + lease);
a SIGKILLed worker's claims lapse and another worker does them; a failing image marks its
product failed (/stats, get-documents, the DBA views); a worker without the model's
weights stops with the service's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.domain.worker import EmbeddingWorker
from app.storage import db
from app.vision.service import VisionService
from tests.conftest import ADMIN, api_settings, migrated_database, running_app
from tests.helpers import TEST_MODEL, data_url, product, product_image
from tests.imageserver import ImageServer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def queue_db(server_url: str) -> Iterator[str]:
    """A database of its own: workers take every pending product they can see."""
    with migrated_database(server_url, "queue") as url:
        yield url


@contextlib.asynccontextmanager
async def queue_app(url: str, tmp: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(api_settings(url, tmp, ingest_mode="queue", **overrides)) as api:
        yield api


async def _index(api: httpx.AsyncClient, body: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    name = f"q-{secrets.token_hex(3)}"
    r = await api.post(f"/api/v1/indexes/{name}", json=body or {"model": TEST_MODEL}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return name, {"x-marqo-index-id": r.json()["indexId"]}


async def _add(api: httpx.AsyncClient, name: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _worker_settings(url: str, tmp: Path) -> Any:
    return api_settings(url, tmp)


async def _drain(url: str, tmp: Path, **kwargs: Any) -> EmbeddingWorker:
    """One in-process worker run until the queue is empty."""
    pool = await db.create_pool(url, min_size=1, max_size=4, statement_timeout_ms=30_000)
    settings = _worker_settings(url, tmp)
    vision = VisionService(settings)
    worker = EmbeddingWorker(pool, vision, batch_size=kwargs.get("batch_size", 8), lease_s=30, max_attempts=5,
                             fetch_concurrency=4)
    try:
        await worker.run(poll_interval_s=0.1, once=True)
    finally:
        await vision.aclose()
        await pool.close()
    return worker


async def test_queued_products_answer_202_and_are_searchable_only_once_embedded(
    queue_db: str, images: ImageServer, tmp_path: Path
) -> None:
    async with queue_app(queue_db, tmp_path) as api:
        name, read = await _index(api, {"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}})
        broken = images.url("/no-such-image.jpg")
        docs = [product(f"p{i}", data_url(product_image(i)), productTitle=f"blue lamp {i}") for i in range(4)]
        docs.append(product("broken", broken, productTitle="blue lamp broken"))
        docs.append({"_id": "invalid", "price": 3})  # validated at once: a per-item 400, not queued
        items = await _add(api, name, docs)
        assert [i["status"] for i in items] == [202] * 5 + [400]
        assert "queued" in items[0]["message"]
        base = f"/api/v1/indexes/{name}"

        async def hit_ids(body: dict[str, Any]) -> list[str]:
            r = await api.post(f"{base}/search", json=body, headers=read)
            assert r.status_code == 200, r.text
            return [h["_id"] for h in r.json()["hits"]]

        image_q = data_url(product_image(2))
        assert await hit_ids({"q": "*"}) == []
        assert await hit_ids({"q": "blue lamp"}) == []
        assert await hit_ids({"q": image_q}) == []
        r = await api.post(f"{base}/reverse-image-search", json={"q": image_q}, headers=read)
        assert r.status_code == 200 and r.json()["hits"] == []
        r = await api.post(f"{base}/get-documents", json={"documentIds": ["p0", "broken"]}, headers=read)
        assert [d["_embedding"]["status"] for d in r.json()["results"]] == ["pending", "pending"]
        stats = (await api.get(f"{base}/stats", headers=ADMIN)).json()
        assert stats["embeddings"] == {"pending": 5, "failed": 0} and stats["numberOfVectors"] == 0

        worker = await _drain(queue_db, tmp_path)
        assert (worker.stats.claimed, worker.stats.embedded, worker.stats.failed) == (5, 4, 1)

        assert sorted(await hit_ids({"q": "*"})) == ["p0", "p1", "p2", "p3"]
        assert (await hit_ids({"q": image_q}))[0] == "p2"
        assert "p1" in await hit_ids({"q": "blue lamp"})
        r = await api.post(f"{base}/reverse-image-search", json={"q": image_q}, headers=read)
        assert r.json()["hits"][0]["_id"] == "p2"
        r = await api.post(f"{base}/get-documents", json={"documentIds": ["p0", "broken"]}, headers=read)
        ready, failed = r.json()["results"]
        assert "_embedding" not in ready and ready["_found"]
        assert failed["_embedding"]["status"] == "failed"
        assert "variantImageUrl" in failed["_embedding"]["message"] and "404" in failed["_embedding"]["message"]
        stats = (await api.get(f"{base}/stats", headers=ADMIN)).json()
        assert stats["embeddings"] == {"pending": 0, "failed": 1}
        assert stats["numberOfVectors"] == 4 and stats["reverseImageSearch"]["featuresReady"] == 4

        conn = await asyncpg.connect(queue_db)
        try:
            rows = await conn.fetch(
                "SELECT product_id, stage, error FROM lookalike_failed_products WHERE index_name = $1", name
            )
            overview = await conn.fetchrow(
                "SELECT embeddings_pending, embeddings_failed FROM lookalike_index_overview WHERE index_name = $1",
                name,
            )
            index_pk = await conn.fetchval("SELECT pk FROM indexes WHERE name = $1", name)
            # the workers store each product's colour descriptor with its features, as ingest does
            colours = await conn.fetchval(f"SELECT count(colour) FROM vectors_{int(index_pk)}")
        finally:
            await conn.close()
        assert [(r["product_id"], r["stage"]) for r in rows] == [("broken", "embedding")]
        assert "404" in rows[0]["error"]
        assert tuple(overview) == (0, 1)
        assert colours == 4

        # replacing a product queues it again; it leaves search until re-embedded
        items = await _add(api, name, [product("p0", data_url(product_image(50)), productTitle="blue lamp 0")])
        assert items[0]["status"] == 202
        assert sorted(await hit_ids({"q": "*"})) == ["p1", "p2", "p3"]
        await _drain(queue_db, tmp_path)
        assert sorted(await hit_ids({"q": "*"})) == ["p0", "p1", "p2", "p3"]


# -- worker processes ---------------------------------------------------------------------------


def _start_worker(url: str, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    environment = dict(os.environ)
    environment.pop("LOOKALIKE_MODEL_WEIGHTS", None)
    environment.update(
        LOOKALIKE_DATABASE_URL=url, LOOKALIKE_IMAGE_FETCH_ALLOWLIST="127.0.0.1", LOOKALIKE_INFERENCE_THREADS="1",
        **env,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--poll-interval", "0.2", *args],
        cwd=REPO_ROOT,
        env=environment,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _claimed(log: Path) -> int:
    return sum(int(n) for n in re.findall(r"batch \S+: claimed (\d+)", log.read_text()))


async def _wait_for(predicate: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _states(url: str, index: str) -> dict[str, tuple[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT p.product_id, p.embedding_status, p.embedding_attempts FROM products p"
            " JOIN indexes i ON i.pk = p.index_pk WHERE i.name = $1",
            index,
        )
        return {r["product_id"]: (r["embedding_status"], r["embedding_attempts"]) for r in rows}
    finally:
        await conn.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
async def test_two_workers_share_the_queue_and_a_killed_workers_claims_return(
    queue_db: str, images: ImageServer, tmp_path: Path
) -> None:
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        async with queue_app(queue_db, tmp_path) as api:
            name, _ = await _index(api)
            # both workers running before the work arrives, so that both take part; they are
            # stopped once it is done (SIGTERM), not by --max-idle: a short idle limit could end
            # the first worker before a loaded machine has started the second, the longer one
            # here only bounds a worker the test fails to stop
            workers = [_start_worker(queue_db, log, "--batch-size", "3", "--max-idle", "120") for log in logs]

            def tails() -> str:
                texts = [log.read_text()[-2000:] if log.exists() else "(no log)" for log in logs]
                return f"exit codes {[w.poll() for w in workers]}, logs: {texts}"

            async def both_started() -> bool:
                if any(w.poll() is not None for w in workers):
                    raise AssertionError("a worker exited while the test waited for both to start")
                return all(log.exists() and "started" in log.read_text() for log in logs)

            try:
                await _wait_for(both_started, 240, "both workers to start")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; {tails()}") from None
            docs = [product(f"s{i}", data_url(product_image(200 + i))) for i in range(24)]
            assert {i["status"] for i in await _add(api, name, docs)} == {202}

        async def all_embedded() -> bool:
            states = await _states(queue_db, name)
            return len(states) == 24 and all(status == "ready" for status, _ in states.values())

        await _wait_for(all_embedded, 240, "the workers to embed all 24 products")
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=60)
        texts = [log.read_text() for log in logs]
        assert [p.returncode for p in workers] == [0, 0], texts
        assert all("done: " in text for text in texts), texts
        claimed = [_claimed(log) for log in logs]
        # every product claimed exactly once over both workers, and both took part
        assert sum(claimed) == 24 and min(claimed) > 0, claimed
        states = await _states(queue_db, name)
        assert set(states.values()) == {("ready", 1)} and len(states) == 24
    finally:
        for proc in workers:
            _stop(proc)

    # a worker SIGKILLed mid-batch: its claims lapse with the lease, another worker does them
    for i in range(6):
        images.add_slow(f"/slow-{i}.jpg", product_image(300 + i), delay_s=0.05, chunk_size=64)
    async with queue_app(queue_db, tmp_path) as api:
        name, _ = await _index(api)
        docs = [product(f"k{i}", images.url(f"/slow-{i}.jpg")) for i in range(6)]
        assert {i["status"] for i in await _add(api, name, docs)} == {202}
    lease = {"LOOKALIKE_WORKER_LEASE_S": "3"}
    victim = _start_worker(queue_db, tmp_path / "victim.log", "--batch-size", "6", **lease)
    try:
        async def claimed_by_victim() -> bool:
            return all(attempts == 1 for _, attempts in (await _states(queue_db, name)).values())

        await _wait_for(claimed_by_victim, 120, "the victim to claim the batch")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        _stop(victim)
    assert {status for status, _ in (await _states(queue_db, name)).values()} == {"pending"}
    rescuer_log = tmp_path / "rescuer.log"
    rescuer = _start_worker(queue_db, rescuer_log, "--batch-size", "6", "--max-idle", "6", **lease)
    try:
        rescuer.wait(timeout=240)
    finally:
        _stop(rescuer)
    assert rescuer.returncode == 0, rescuer_log.read_text()
    states = await _states(queue_db, name)
    assert set(states.values()) == {("ready", 2)}, states  # nothing lost; each claimed twice
    assert _claimed(rescuer_log) == 6


@pytest.mark.slow
async def test_worker_without_the_models_weights_stops_with_the_services_message(
    queue_db: str, tmp_path: Path
) -> None:
    import safetensors.torch

    from app.vision.model import EmbeddingModel, ModelSpec

    # weights for a "pretrained" spec, present where the service runs, absent where the worker runs
    source = EmbeddingModel.load(dataclasses.replace(ModelSpec.parse(TEST_MODEL), seed=7))
    weights = tmp_path / "vit_tiny_patch16_224.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.module.state_dict().items()}, str(weights))
    model = {"name": "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "imageSize": 64}
    async with queue_app(queue_db, tmp_path, model_weights=weights) as api:
        name, _ = await _index(api, {"model": model})
        items = await _add(api, name, [product("w0", data_url(product_image(1)))])
        assert items[0]["status"] == 202
    log = tmp_path / "no-weights.log"
    hub = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}
    proc = _start_worker(queue_db, log, "--once", **hub)
    proc.wait(timeout=180)
    text = log.read_text()
    assert proc.returncode == 1, text
    assert "weights for model vit_tiny_patch16_224.augreg_in21k_ft_in1k are not available" in text
    assert "To provide them: set LOOKALIKE_MODEL_WEIGHTS=/path/to/" in text
    assert "Traceback" not in text
    assert await _states(queue_db, name) == {"w0": ("pending", 0)}  # untouched, for a worker that has them
