"""Admission control and a short load run: overload is shed with 503 + Retry-After, never queued forever.

The long run is `python -m benchmarks.load` (200 clients, 60 s); this is its CI-sized sibling
(50 clients for 10 s) against the real app behind uvicorn on a loopback port, with small
admission limits so that the overload is certain on any machine.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

import pytest

from app.http.admission import AdmissionLimits
from benchmarks.load import KEY as LOAD_KEY
from benchmarks.load import run_load, seed_index
from tests.conftest import ADMIN, LiveServer, api_settings, running_app
from tests.helpers import TEST_MODEL, data_url, product, product_image
from tests.imageserver import ImageServer
from tests.test_bad_inputs import assert_error

TIGHT = AdmissionLimits(heavy_in_flight=1, heavy_queue=1, light_in_flight=4, light_queue=4, queue_timeout_s=3.0)


async def test_heavy_requests_are_shed_and_light_ones_still_served(
    database_url: str, tmp_path: Path, images: ImageServer
) -> None:
    async with running_app(api_settings(database_url, tmp_path), admission=TIGHT) as client:
        gates = client.app.state.admission  # type: ignore[attr-defined]
        name = f"adm-{secrets.token_hex(3)}"
        r = await client.post(
            f"/api/v1/indexes/{name}",
            json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}},
            headers=ADMIN,
        )
        read = {"x-marqo-index-id": r.json()["indexId"]}
        base = f"/api/v1/indexes/{name}"
        # A slow image host keeps each heavy request busy for about a second.
        slow = images.add_slow(f"/{name}/slow.jpg", product_image(3), delay_s=0.002, chunk_size=8)
        heavy = [
            client.post(base + "/reverse-image-search", json={"q": slow}, headers=read),
            client.post(base + "/search", json={"q": slow}, headers=read),
            client.post(base + "/documents", json={"documents": [product("s1", slow)]}, headers=ADMIN),
            client.post(base + "/search", json={"q": data_url(product_image(4))}, headers=read),
            client.post(base + "/reverse-image-search", json={"q": slow}, headers=read),
        ]
        tasks = [asyncio.create_task(call) for call in heavy]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        light = await client.post(base + "/search", json={"q": "shoes"}, headers=read)  # text: light gate
        assert light.status_code == 200 and time.monotonic() - started < 1.0
        responses = await asyncio.gather(*tasks)
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(503) >= 3, statuses  # one ran, one waited, the rest were shed at once
        for r in responses:
            if r.status_code == 503:
                assert_error(r, 503, "overloaded")
                assert r.headers["retry-after"] == "1"
            else:
                assert r.status_code in (200, 400), r.text  # 400: the slow image timed out
        assert gates.heavy.rejected >= 3 and gates.heavy.active == 0 and gates.heavy.waiting == 0
        assert gates.light.rejected == 0


async def test_search_is_gated_by_what_it_searches_with(database_url: str, tmp_path: Path) -> None:
    async with running_app(api_settings(database_url, tmp_path)) as client:
        gates = client.app.state.admission  # type: ignore[attr-defined]
        name = f"cls-{secrets.token_hex(3)}"
        r = await client.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN)
        read = {"x-marqo-index-id": r.json()["indexId"]}
        base = f"/api/v1/indexes/{name}/search"
        cases = [
            ({"q": "red shoes"}, "light"),
            ({"q": "*", "filter": "brand:x"}, "light"),
            (b'{"q": "\\u0000"}', "light"),
            (b"[1, 2]", "light"),
            (b"{broken", "light"),
            ({"q": data_url(product_image(5))}, "heavy"),  # a data URL, over 8 KiB: not even read
            ({"q": data_url(product_image(6, size=24))}, "heavy"),  # a small data URL, read and parsed
            ({"q": "http://10.0.0.1/a.jpg"}, "heavy"),
        ]
        for body, expected in cases:
            before = (gates.heavy.admitted, gates.light.admitted)
            if isinstance(body, bytes):
                r = await client.post(base, content=body, headers=read)
            else:
                r = await client.post(base, json=body, headers=read)
            assert r.status_code in (200, 400), r.text
            after = (gates.heavy.admitted, gates.light.admitted)
            got = "heavy" if after[0] > before[0] else "light"
            assert got == expected, (body if isinstance(body, bytes) else str(body)[:60], got)
        # The replayed body reached the handler intact (a chunked body too).
        r = await client.post(base, json={"q": "*", "limit": 3}, headers=read)
        assert r.json()["limit"] == 3

        async def chunks():  # type: ignore[no-untyped-def]
            for part in (b'{"q": "*", ', b'"limit": 4}'):
                yield part

        r = await client.post(base, content=chunks(), headers=read)
        assert r.status_code == 200 and r.json()["limit"] == 4, r.text


@pytest.fixture()
def tight_server(database_url: str, tmp_path: Path) -> LiveServer:
    from app.main import create_app

    settings = api_settings(database_url, tmp_path, api_key=LOAD_KEY)  # the key benchmarks.load sends
    server = LiveServer(settings)
    limits = AdmissionLimits(heavy_in_flight=4, heavy_queue=8, light_in_flight=16, light_queue=16, queue_timeout_s=2)
    server.app = create_app(settings, run_migrations=False, start_background_work=False, admission=limits)
    return server


async def test_load_smoke_50_clients_10_s(tight_server: LiveServer, images: ImageServer) -> None:
    with tight_server as server:
        name = f"load-{secrets.token_hex(3)}"
        urls = [images.add(f"/{name}/{i}.jpg", product_image(i, size=96)) for i in range(40)]
        target = await seed_index(server.url, name, 40, lambda i: urls[i])
        me = os.getpid()
        report = await run_load(target, clients=50, duration_s=10, rss_pids={"process": [me]})
        gates = server.app.state.admission
    ops = report["per_operation"]
    print({k: v for k, v in report.items() if k not in ("rss_samples",)})
    assert report["server_errors_excluding_503"] == 0, report["error_codes"]
    assert report["client_timeouts"] == 0 and not report["transport_errors"]
    assert report["responses_503_without_retry_after"] == 0
    assert report["acknowledged_products_lost"] == 0 and report["acknowledged_products"] > 0
    assert report["shed_503_429"] > 0, "50 clients against 4 heavy slots should overload"
    assert gates.heavy.rejected > 0 and gates.heavy.active == 0 and gates.light.active == 0
    assert set(report["error_codes"]) <= {"503 overloaded"}, report["error_codes"]
    assert all(ops[op]["statuses"].get(200, 0) > 0 for op in ("text", "browse", "get", "image", "reverse", "ingest"))
    # Admitted requests wait at most the queue timeout plus their own work.
    assert max(data.get("max_ms", 0) for data in ops.values()) < 15_000
    rss = report["process_rss_mb"]
    assert rss["median_last_third"] - rss["median_first_third"] < 300, rss
