"""Index and product APIs end to end: real app, real PostgreSQL, loopback image server."""

from __future__ import annotations

import io
import secrets

import httpx
import pytest
from PIL import Image

from tests.conftest import ADMIN
from tests.helpers import TEST_MODEL, data_url, product, product_image


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def create_index(api: httpx.AsyncClient, name: str, **body: object) -> dict:
    response = await api.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL, **body}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


async def test_index_lifecycle(api: httpx.AsyncClient) -> None:
    name = unique("life")
    created = await create_index(api, name)
    assert created["indexName"] == name and len(created["indexId"]) >= 24
    assert created["settings"]["vectorType"] == "halfvec"
    assert created["settings"]["reverseImageSearch"]["enabled"] is False

    again = await api.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN)
    assert again.status_code == 409 and again.json()["code"] == "index_exists"

    listed = (await api.get("/api/v1/indexes", headers=ADMIN)).json()["results"]
    assert any(r["indexName"] == name and r["documentCount"] == 0 for r in listed)

    patched = await api.patch(
        f"/api/v1/indexes/{name}/settings", json={"reverseImageSearch": {"enabled": True}}, headers=ADMIN
    )
    assert patched.status_code == 200 and patched.json()["reverseImageSearch"]["enabled"] is True
    settings = (await api.get(f"/api/v1/indexes/{name}/settings", headers=ADMIN)).json()
    assert settings["reverseImageSearch"]["enabled"] is True

    bad = await api.patch(f"/api/v1/indexes/{name}/settings", json={"vectorType": "vector"}, headers=ADMIN)
    assert bad.status_code == 400 and "cannot be changed" in bad.json()["error"]

    stats = (await api.get(f"/api/v1/indexes/{name}/stats", headers=ADMIN)).json()
    assert stats["numberOfDocuments"] == 0 and stats["numberOfVectors"] == 0

    deleted = await api.delete(f"/api/v1/indexes/{name}", headers=ADMIN)
    assert deleted.status_code == 200
    gone = await api.get(f"/api/v1/indexes/{name}/settings", headers=ADMIN)
    assert gone.status_code == 404 and gone.json()["code"] == "index_not_found"


async def test_deleting_an_index_never_locks_out_the_others(api: httpx.AsyncClient, pool) -> None:
    """An index delete takes row locks only: a transaction still reading `products` (a long search,
    a backfill batch) neither delays it nor is it stopped by it, and the other indexes keep answering.
    Its vector table goes right after, even while that reader holds `products`: the table has no
    foreign key to `products` (migration 0012), so its drop does not need `products` to itself."""
    import asyncio

    from app.storage import indexes

    doomed, other = unique("doomed"), unique("other")
    for name in (doomed, other):
        await create_index(api, name)
    record = await indexes.get_index(pool, doomed)
    assert record is not None
    add = await api.post(
        f"/api/v1/indexes/{other}/documents",
        json={"documents": [product("kept", data_url(product_image(3)), productTitle="Kept Boot")]},
        headers=ADMIN,
    )
    assert add.status_code == 200 and add.json()["errors"] is False, add.text
    async with pool.acquire() as reader:
        async with reader.transaction():
            await reader.fetchval("SELECT count(*) FROM products")  # holds its lock until commit
            deleted = await asyncio.wait_for(api.delete(f"/api/v1/indexes/{doomed}", headers=ADMIN), 20)
            assert deleted.status_code == 200, deleted.text
            found = await asyncio.wait_for(
                api.post(f"/api/v1/indexes/{other}/search", json={"q": "boot"}, headers=ADMIN), 20
            )
            assert [h["_id"] for h in found.json()["hits"]] == ["kept"]
            # the reader still holds products: the emptied vector table goes all the same
            for _ in range(200):
                if not await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", record.vectors_table):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"{record.vectors_table} was not dropped while a reader held products")
        dropped, left = await indexes.drop_orphan_vector_tables(pool)
    assert record.vectors_table not in dropped and not left  # nothing was left to drop
    gone = await api.get(f"/api/v1/indexes/{doomed}/settings", headers=ADMIN)
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"vectorType": "float8"}, "vectorType"),
        ({"model": {"name": "no_such_architecture_xyz", "pretrained": False}}, "model"),
        ({"reverseImageSearch": {"enabled": "yes"}}, "enabled"),
        ({"colour": "blue"}, "unknown index setting"),
    ],
)
async def test_create_index_rejects_bad_settings(api: httpx.AsyncClient, body: dict, fragment: str) -> None:
    response = await api.post(f"/api/v1/indexes/{unique('bad')}", json=body, headers=ADMIN)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


async def test_invalid_index_name(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/indexes/Bad_Name", json={"model": TEST_MODEL}, headers=ADMIN)
    assert response.status_code == 400 and response.json()["code"] == "invalid_index_name"


async def test_128_products_stored_with_embeddings_and_hnsw_used(
    api: httpx.AsyncClient, images, pool
) -> None:
    name = unique("bulk")
    await create_index(api, name)
    docs = []
    for i in range(128):
        data = product_image(i)
        if i % 2:
            url = images.add(f"/bulk/{name}/{i}.jpg", data, "image/jpeg")
        else:
            url = data_url(data)
        docs.append(product(f"p{i}", url, brand="Acme" if i % 3 else "Nike", productCollections=["a", "b"]))
    response = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["errors"] is False, [i for i in body["items"] if i["status"] != 200][:3]
    assert len(body["items"]) == 128 and isinstance(body["processingTimeMs"], int)

    index_pk = await pool.fetchval("SELECT pk FROM indexes WHERE name = $1", name)
    assert await pool.fetchval("SELECT count(*) FROM products WHERE index_pk = $1", index_pk) == 128
    assert await pool.fetchval(f"SELECT count(*) FROM vectors_{index_pk}") == 128
    stats = (await api.get(f"/api/v1/indexes/{name}/stats", headers=ADMIN)).json()
    assert stats["numberOfDocuments"] == 128 and stats["numberOfVectors"] == 128

    async with pool.acquire() as conn:
        probe = await conn.fetchval(f"SELECT embedding FROM vectors_{index_pk} LIMIT 1")
        await conn.execute("SET enable_seqscan = off")  # 128 rows: make the planner show its index choice
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                f"EXPLAIN SELECT product_pk FROM vectors_{index_pk} ORDER BY embedding <=> $1 LIMIT 10", probe
            )
        )
        await conn.execute("RESET enable_seqscan")
    assert f"vectors_{index_pk}_hnsw" in plan, plan


async def test_bad_items_fail_alone(api: httpx.AsyncClient, images) -> None:
    name = unique("bad-items")
    await create_index(api, name)
    good = images.add(f"/{name}/good.jpg", product_image(1), "image/jpeg")
    not_image = images.add(f"/{name}/text.jpg", b"this is not an image at all", "image/jpeg")
    truncated = images.add(f"/{name}/trunc.jpg", product_image(2, size=256)[:600], "image/jpeg")
    bomb_png = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb_png, "PNG")  # ~ a few KB on the wire, 400 MP decoded
    bomb = images.add(f"/{name}/bomb.png", bomb_png.getvalue(), "image/png")
    docs = [
        product("ok1", good),
        product("missing", images.url(f"/{name}/nothing-here.jpg")),
        product("notimage", not_image),
        product("private", "http://10.1.2.3/x.jpg"),
        product("truncated", truncated),
        product("bomb", bomb),
        {"_id": "notitle", "price": 1, "variantImageUrl": good},
        product("nested", good, specs={"weight": 3}),
        product("ok2", data_url(product_image(3))),
    ]
    response = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert response.status_code == 200
    body = response.json()
    assert body["errors"] is True
    items = {item["_id"]: item for item in body["items"]}
    assert items["ok1"]["status"] == 200 and items["ok2"]["status"] == 200
    expectations = {
        "missing": "404",
        "notimage": "not an image",
        "private": "private",
        "truncated": "truncated",
        "bomb": "pixels",
        "notitle": "productTitle is required",
        "nested": "nested object",
    }
    for product_id, fragment in expectations.items():
        assert items[product_id]["status"] == 400, items[product_id]
        assert fragment in items[product_id]["message"], items[product_id]
    got = await api.post(
        f"/api/v1/indexes/{name}/get-documents", json={"documentIds": ["ok1", "ok2", "bomb"]}, headers=ADMIN
    )
    found = {r["_id"]: r["_found"] for r in got.json()["results"]}
    assert found == {"ok1": True, "ok2": True, "bomb": False}


async def test_replace_update_get_delete(api: httpx.AsyncClient, images, pool) -> None:
    name = unique("crud")
    created = await create_index(api, name)
    read = {"x-marqo-index-id": created["indexId"]}
    url = images.add(f"/{name}/a.png", product_image(7, fmt="PNG"), "image/png")
    doc = product("a", url, brand="Nike", collections=["shoes"], inStock=True, sizes=["9", "10"])
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": [doc]}, headers=ADMIN)
    assert r.json()["items"] == [{"_id": "a", "status": 200}]

    got = (
        await api.post(
            f"/api/v1/indexes/{name}/get-documents", json={"documentIds": ["a", "zz"]}, headers=read
        )
    ).json()
    first, missing = got["results"]
    assert first["_found"] is True and first["brand"] == "Nike" and first["productCollections"] == ["shoes"]
    assert missing == {"_id": "zz", "_found": False, "message": "document not found"}

    index_pk = await pool.fetchval("SELECT pk FROM indexes WHERE name = $1", name)
    before = await pool.fetchval(f"SELECT embedding::text FROM vectors_{index_pk}")

    # Partial update without an image change keeps the embedding; full replace drops old fields.
    r = await api.patch(
        f"/api/v1/indexes/{name}/documents", json={"documents": [{"_id": "a", "price": 99.5}]}, headers=ADMIN
    )
    assert r.json()["items"] == [{"_id": "a", "status": 200}]
    r = await api.patch(
        f"/api/v1/indexes/{name}/documents", json={"documents": [{"_id": "nope", "price": 1}]}, headers=ADMIN
    )
    assert r.json()["items"][0]["status"] == 404
    doc2 = product("a", url, color="red")
    await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": [doc2]}, headers=ADMIN)
    got = (
        await api.post(f"/api/v1/indexes/{name}/get-documents", json={"documentIds": ["a"]}, headers=read)
    ).json()
    assert "brand" not in got["results"][0] and got["results"][0]["color"] == "red"
    assert await pool.fetchval(f"SELECT embedding::text FROM vectors_{index_pk}") == before

    # Changing the image re-embeds.
    url2 = images.add(f"/{name}/b.png", product_image(8, fmt="PNG"), "image/png")
    r = await api.patch(
        f"/api/v1/indexes/{name}/documents",
        json={"documents": [{"_id": "a", "variantImageUrl": url2}]},
        headers=ADMIN,
    )
    assert r.json()["items"] == [{"_id": "a", "status": 200}]
    assert await pool.fetchval(f"SELECT embedding::text FROM vectors_{index_pk}") != before

    r = await api.request(
        "DELETE", f"/api/v1/indexes/{name}/documents", json={"ids": ["a", "b"]}, headers=ADMIN
    )
    assert r.json() == {
        "details": {"deletedDocuments": 1, "receivedDocumentIds": 2},
        "items": [
            {"_id": "a", "result": "deleted", "status": 200},
            {"_id": "b", "result": "not_found", "status": 404},
        ],
    }
    assert await pool.fetchval(f"SELECT count(*) FROM vectors_{index_pk}") == 0


async def test_unchanged_image_is_not_re_embedded(api: httpx.AsyncClient, images) -> None:
    name = unique("reuse")
    await create_index(api, name)
    url = images.add(f"/{name}/same.jpg", product_image(11), "image/jpeg")
    await api.post(
        f"/api/v1/indexes/{name}/documents", json={"documents": [product("x", url)]}, headers=ADMIN
    )
    vision = api.app.state.services.vision  # type: ignore[attr-defined]
    calls = []
    original = vision.embed

    async def counting(spec, imgs):  # type: ignore[no-untyped-def]
        calls.append(len(imgs))
        return await original(spec, imgs)

    vision.embed = counting
    try:
        r = await api.post(
            f"/api/v1/indexes/{name}/documents",
            json={"documents": [product("x", url, productTitle="renamed"), product("y", url)]},
            headers=ADMIN,
        )
    finally:
        vision.embed = original
    assert [i["status"] for i in r.json()["items"]] == [200, 200]
    assert calls == []


async def test_batch_validation(api: httpx.AsyncClient) -> None:
    name = unique("batch")
    await create_index(api, name)
    too_many = {"documents": [product(f"p{i}", "http://127.0.0.1/x.jpg") for i in range(129)]}
    r = await api.post(f"/api/v1/indexes/{name}/documents", json=too_many, headers=ADMIN)
    assert r.status_code == 400 and "at most 128" in r.json()["error"]
    r = await api.post(f"/api/v1/indexes/{name}/documents", content=b"{not json", headers=ADMIN)
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"docs": []}, headers=ADMIN)
    assert r.status_code == 400
    r = await api.post("/api/v1/indexes/does-not-exist/documents", json={"documents": []}, headers=ADMIN)
    assert r.status_code == 404


ENDPOINTS = [
    ("GET", "/api/v1/indexes", None),
    ("POST", "/api/v1/indexes/{name}", {"model": TEST_MODEL}),
    ("GET", "/api/v1/indexes/{name}", None),
    ("DELETE", "/api/v1/indexes/{name}", None),
    ("GET", "/api/v1/indexes/{name}/settings", None),
    ("PATCH", "/api/v1/indexes/{name}/settings", {"reverseImageSearch": {"enabled": True}}),
    ("GET", "/api/v1/indexes/{name}/stats", None),
    ("POST", "/api/v1/indexes/{name}/calibrate", {"queries": 2}),
    ("POST", "/api/v1/indexes/{name}/documents", {"documents": []}),
    ("PATCH", "/api/v1/indexes/{name}/documents", {"documents": []}),
    ("DELETE", "/api/v1/indexes/{name}/documents", {"ids": ["a"]}),
    ("POST", "/api/v1/indexes/{name}/get-documents", {"documentIds": ["a"]}),
    ("POST", "/api/v1/indexes/{name}/search", {"q": "*"}),
    ("POST", "/api/v1/indexes/{name}/reverse-image-search", {"q": "http://127.0.0.1/a.jpg"}),
    ("POST", "/api/v1/indexes/{name}/collections", {"collectionName": "shoes"}),
    ("GET", "/api/v1/indexes/{name}/collections?body=eyJjb2xsZWN0aW9uTmFtZSI6InNob2VzIn0", None),
    ("POST", "/api/v1/indexes/{name}/recommendations/similar", {"documentIds": ["a"]}),
]
READ_PATHS = {"/get-documents", "/search", "/reverse-image-search", "/collections", "/recommendations/similar"}


async def test_credentials_on_every_endpoint(api: httpx.AsyncClient) -> None:
    a, b = unique("auth-a"), unique("auth-b")
    index_a = await create_index(api, a)
    index_b = await create_index(api, b)
    wrong_headers = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic " + ADMIN["Authorization"].split()[1]},
        {"x-marqo-index-id": index_b["indexId"]},  # B's id never opens A
        {"x-marqo-index-id": ""},
    ]
    for method, template, body in ENDPOINTS:
        path = template.format(name=a)
        for headers in wrong_headers:
            r = await api.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json() == {"error": "Unauthorized", "code": "unauthorized"}
        is_read = any(path.split("?")[0].endswith(suffix) for suffix in READ_PATHS)
        r = await api.request(method, path, json=body, headers={"x-marqo-index-id": index_a["indexId"]})
        assert (r.status_code != 401) == is_read, (method, path, r.status_code)
    # Unknown index: 401 without the admin key, 404 with it.
    r = await api.post(
        "/api/v1/indexes/nope-nope/search", json={}, headers={"x-marqo-index-id": index_a["indexId"]}
    )
    assert r.status_code == 401
    r = await api.post("/api/v1/indexes/nope-nope/search", json={}, headers=ADMIN)
    assert r.status_code == 404


async def test_unknown_route_and_method_are_json(api: httpx.AsyncClient) -> None:
    r = await api.get("/api/v1/nothing")
    assert r.status_code == 404 and set(r.json()) == {"error", "code"}
    r = await api.put("/api/v1/indexes", headers=ADMIN)
    assert r.status_code == 405 and set(r.json()) == {"error", "code"}


async def test_body_limit_is_413(database_url: str, tmp_path) -> None:
    from tests.conftest import api_settings, running_app

    async with running_app(api_settings(database_url, tmp_path, max_body_bytes=1000)) as client:
        name = unique("big")
        await create_index(client, name)
        big = {"documents": [product("a", "data:image/png;base64," + "A" * 5000)]}
        r = await client.post(f"/api/v1/indexes/{name}/documents", json=big, headers=ADMIN)
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


async def test_large_data_url_image_is_accepted(api: httpx.AsyncClient) -> None:
    """Data URLs are bounded by the body limit and the image byte cap, not the text-field limit."""
    import random

    name = unique("bigdata")
    await create_index(api, name)
    rng = random.Random(3)
    noisy = Image.frombytes("RGB", (320, 320), bytes(rng.randrange(256) for _ in range(320 * 320 * 3)))
    out = io.BytesIO()
    noisy.save(out, "PNG")
    url = data_url(out.getvalue(), "image/png")
    assert len(url) > 200_000
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": [product("big", url)]}, headers=ADMIN)
    assert r.json()["items"] == [{"_id": "big", "status": 200}]
