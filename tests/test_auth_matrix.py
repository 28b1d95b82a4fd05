"""Credentials beyond tests/test_api_foundation.py: secrets never logged or stored in clear,
credentials that must not open anything, and indexes isolated from each other."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN, ADMIN_KEY
from tests.helpers import TEST_MODEL, data_url, product, product_image
from tests.imageserver import ImageServer
from tests.test_api_foundation import ENDPOINTS
from tests.test_bad_inputs import assert_error

UNAUTHORIZED = {"error": "Unauthorized", "code": "unauthorized"}


async def _create(api: httpx.AsyncClient, name: str, **body: object) -> str:
    r = await api.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL, **body}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return str(r.json()["indexId"])


async def test_more_credentials_that_open_nothing(api: httpx.AsyncClient) -> None:
    a = f"authx-{secrets.token_hex(3)}"
    a_id = await _create(api, a)
    wrong = [
        {"Authorization": f"Bearer {a_id}"},  # an index id is not an admin key
        {"x-marqo-index-id": ADMIN_KEY},  # nor is the admin key an index id
        {"Authorization": f"Bearer {ADMIN_KEY}x"},
        {"Authorization": f"Bearer {ADMIN_KEY[:-1]}"},
        {"Authorization": f"Token {ADMIN_KEY}"},
        {"Authorization": ADMIN_KEY},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {ADMIN_KEY.upper()}"},
        {"x-marqo-index-id": a_id[:-1]},
        {"x-marqo-index-id": a_id + " "},
        {"x-marqo-index-id": a_id.upper() if a_id.upper() != a_id else a_id.lower()},
        {"X-Api-Key": ADMIN_KEY},
    ]
    for method, template, body in ENDPOINTS:
        path = template.format(name=a)
        for headers in wrong:
            if method == "POST" and template.endswith("{name}"):
                continue  # creating index A again: covered below with a fresh name
            r = await api.request(method, path, json=body, headers=headers)
            assert r.status_code == 401 and r.json() == UNAUTHORIZED, (method, path, headers, r.status_code)
    for headers in wrong:
        r = await api.post(f"/api/v1/indexes/new-{secrets.token_hex(3)}", json={"model": TEST_MODEL}, headers=headers)
        assert r.status_code == 401 and r.json() == UNAUTHORIZED
    # The key in a query string is not a credential either.
    r = await api.get(f"/api/v1/indexes?api_key={ADMIN_KEY}")
    assert r.status_code == 401
    # Scheme and surrounding spaces are lenient, as HTTP allows; the key itself is exact.
    for good in ({"Authorization": f"bearer {ADMIN_KEY}"}, {"Authorization": f"Bearer   {ADMIN_KEY}  "}):
        assert (await api.get("/api/v1/indexes", headers=good)).status_code == 200


async def test_a_deleted_and_recreated_index_gets_a_new_id(api: httpx.AsyncClient) -> None:
    name = f"reborn-{secrets.token_hex(3)}"
    old_id = await _create(api, name)
    assert (await api.delete(f"/api/v1/indexes/{name}", headers=ADMIN)).status_code == 200
    new_id = await _create(api, name)
    assert new_id != old_id
    r = await api.post(f"/api/v1/indexes/{name}/search", json={}, headers={"x-marqo-index-id": old_id})
    assert_error(r, 401, "unauthorized")
    r = await api.post(f"/api/v1/indexes/{name}/search", json={}, headers={"x-marqo-index-id": new_id})
    assert r.status_code == 200


async def test_open_endpoints_reveal_no_secrets(api: httpx.AsyncClient) -> None:
    name = f"open-{secrets.token_hex(3)}"
    index_id = await _create(api, name)
    for path in ("/health", "/metrics", "/openapi.json"):
        r = await api.get(path)
        assert r.status_code == 200, path
        assert ADMIN_KEY not in r.text and index_id not in r.text, path
        assert name not in r.text, path  # index names are not enumerable without the admin key


async def test_indexes_are_isolated(api: httpx.AsyncClient, images: ImageServer) -> None:
    """Same product ids, same images, same words in two indexes: B never sees A's documents."""
    a, b = f"iso-a-{secrets.token_hex(3)}", f"iso-b-{secrets.token_hex(3)}"
    a_id = await _create(api, a, reverseImageSearch={"enabled": True})
    b_id = await _create(api, b, reverseImageSearch={"enabled": True})
    image = product_image(777)
    url = images.add(f"/{a}/shared.jpg", image)
    docs_a = [product("same-1", url, productTitle="secret alpha", owner="A"), product("only-a", url, owner="A")]
    docs_b = [product("same-1", url, productTitle="public beta", owner="B")]
    for name, docs in ((a, docs_a), (b, docs_b)):
        r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
        assert r.json()["errors"] is False, r.text
    read_b = {"x-marqo-index-id": b_id}
    base_b = f"/api/v1/indexes/{b}"
    queries = [
        ("/search", {"q": "*"}),
        ("/search", {"q": "secret alpha"}),
        ("/search", {"q": "*", "filter": "owner:A OR _id:only-a"}),
        ("/search", {"q": data_url(image)}),
        ("/search", {"q": url}),
        ("/reverse-image-search", {"q": data_url(image)}),
        ("/reverse-image-search", {"q": url, "filter": "NOT owner:B"}),
    ]
    for suffix, body in queries:
        r = await api.post(base_b + suffix, json=body, headers=read_b)
        assert r.status_code == 200, r.text
        for hit in r.json()["hits"]:
            assert hit["_id"] == "same-1" and hit.get("productTitle", "public beta") == "public beta", (body, hit)
    r = await api.post(base_b + "/get-documents", json={"documentIds": ["same-1", "only-a"]}, headers=read_b)
    same, only_a = r.json()["results"]
    assert same["owner"] == "B" and only_a["_found"] is False
    # A's id on B's endpoints, and B's on A's: 401.
    for suffix, body in queries[:1] + [("/get-documents", {"documentIds": ["same-1"]})]:
        r = await api.post(base_b + suffix, json=body, headers={"x-marqo-index-id": a_id})
        assert_error(r, 401, "unauthorized")
        r = await api.post(f"/api/v1/indexes/{a}{suffix}", json=body, headers=read_b)
        assert_error(r, 401, "unauthorized")
    # Deleting B's copy, then B itself, leaves A's products alone.
    r = await api.request("DELETE", base_b + "/documents", json={"ids": ["same-1", "only-a"]}, headers=ADMIN)
    assert r.json()["details"]["deletedDocuments"] == 1
    assert (await api.delete(base_b, headers=ADMIN)).status_code == 200
    r = await api.post(f"/api/v1/indexes/{a}/get-documents", json={"documentIds": ["same-1", "only-a"]}, headers=ADMIN)
    assert [d["owner"] for d in r.json()["results"]] == ["A", "A"]


async def test_api_keys_are_hashed_at_rest(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    rows = await pool.fetch("SELECT * FROM api_keys")
    digests = [bytes(r["key_sha256"]) for r in rows]
    assert hashlib.sha256(ADMIN_KEY.encode()).digest() in digests
    for row in rows:
        for column, value in row.items():
            text = value.hex() if isinstance(value, bytes) else str(value)
            # Not the key, nor any 8 characters of it (a shorter run of its digits turns up by
            # chance in timestamps and hex digests: '3456' once matched a created_at).
            for start in range(len(ADMIN_KEY) - 7):
                assert ADMIN_KEY[start : start + 8] not in text, (column, text)


async def test_keys_and_index_ids_never_logged(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, images: ImageServer
) -> None:
    name = f"logs-{secrets.token_hex(3)}"
    with caplog.at_level(logging.DEBUG):
        index_id = await _create(api, name, reverseImageSearch={"enabled": True})
        read = {"x-marqo-index-id": index_id}
        wrong_key = "Bearer lk_wrong_" + secrets.token_hex(8)
        base = f"/api/v1/indexes/{name}"
        docs = [product("l1", images.add(f"/{name}/l1.jpg", product_image(8))), product("bad", "http://10.0.0.1/x")]
        for method, suffix, body, headers in [
            ("POST", "/documents", {"documents": docs}, ADMIN),
            ("POST", "/search", {"q": "*"}, read),
            ("POST", "/search", {"q": "*", "filter": "broken AND"}, read),
            ("POST", "/reverse-image-search", {"q": "http://10.0.0.1/a.jpg"}, read),
            ("POST", "/get-documents", {"documentIds": ["l1"]}, read),
            ("GET", "/stats", None, ADMIN),
            ("GET", "/stats", None, {"Authorization": wrong_key}),
            ("POST", "/search", {"q": "*"}, {"x-marqo-index-id": index_id + "x"}),
            ("GET", f"/stats?api_key={ADMIN_KEY}&id={index_id}", None, {}),
        ]:
            await api.request(method, base + suffix, json=body, headers=headers)
    secrets_seen = [ADMIN_KEY, index_id, wrong_key.split()[1]]
    for record in caplog.records:
        if record.name.split(".")[0] in ("httpx", "httpcore"):
            continue  # the test's own HTTP client logs the URLs it requests
        text = " ".join(
            [record.getMessage(), repr(getattr(record, "fields", "")), str(record.exc_text or ""), repr(record.args)]
        )
        for secret in secrets_seen:
            assert secret not in text, (secret[:6], record.name, text[:300])
    assert any(r.name == "lookalike.access" for r in caplog.records)  # the access log was captured


def test_served_process_logs_no_secrets(database_url: str, tmp_path: Path) -> None:
    """`lookalike serve` at debug level: its whole stderr holds neither the key nor an index id."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_DATABASE_URL=database_url, LOOKALIKE_API_KEY=ADMIN_KEY, LOOKALIKE_DATA_DIR=str(tmp_path))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "debug"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    raise AssertionError(log_path.read_text()[-3000:])
                time.sleep(0.3)
            name = f"served-{secrets.token_hex(3)}"
            r = httpx.post(f"{base}/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN, timeout=60)
            index_id = r.json()["indexId"]
            read = {"x-marqo-index-id": index_id}
            httpx.post(f"{base}/api/v1/indexes/{name}/search", json={"q": "*"}, headers=read, timeout=30)
            httpx.post(f"{base}/api/v1/indexes/{name}/search", json={"q": "*"}, headers={"x-marqo-index-id": "no"})
            httpx.get(f"{base}/api/v1/indexes?key={ADMIN_KEY}", headers={"Authorization": "Bearer nope"})
            httpx.get(f"{base}/api/v1/indexes/{name}/stats", headers=ADMIN, timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    logged = log_path.read_text()
    assert "/api/v1/indexes" in logged  # requests were logged at all
    assert ADMIN_KEY not in logged and index_id not in logged
