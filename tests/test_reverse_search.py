"""POST /reverse-image-search: every row of SPEC's contract tables, and finding the product."""

from __future__ import annotations

import io
import secrets
from collections.abc import Sequence

import httpx
import numpy as np
import pytest
from PIL import Image

from app.filters import parse_filter
from app.samples import wild
from app.storage import indexes as storage_indexes
from app.storage import search as search_sql
from app.vision import aggregate, colour, crops, local_features
from app.vision.openclip import OFFLINE_OPEN_CLIP_MODEL
from tests.conftest import ADMIN
from tests.helpers import TEST_MODEL, data_url, product_image

Q_ERROR = "q must be an image URL or base64 data URI"

# The same contract on an image-only timm index and on an open_clip (image + text) index.
MODELS = {"timm": TEST_MODEL, "open_clip": OFFLINE_OPEN_CLIP_MODEL}


def _jpeg(image) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module", params=list(MODELS))
async def shop(api: httpx.AsyncClient, images, request: pytest.FixtureRequest) -> dict:  # type: ignore[no-untyped-def]
    """A small catalog with look-alike families, reverse search on, plus wild queries."""
    name = f"rev-{secrets.token_hex(3)}"
    model = MODELS[request.param]
    r = await api.post(
        f"/api/v1/indexes/{name}", json={"model": model, "reverseImageSearch": {"enabled": True}}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    catalog = wild.generate_catalog(24, seed=5)
    docs = []
    for item in catalog:
        url = images.add(f"/{name}/{item.id}.jpg", _jpeg(item.image), "image/jpeg")
        docs.append(
            {
                "_id": item.id,
                "productTitle": item.metadata.get("title", item.id),
                "variantTitle": "default",
                "price": float(item.metadata.get("price", 10)),
                "brand": str(item.metadata.get("brand", "acme")),
                "productCollections": ["catalog", item.family],
                "variantImageUrl": url,
            }
        )
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert r.json()["errors"] is False, r.text
    queries = wild.generate_queries(catalog, 6, seed=9)
    return {
        "name": name,
        "headers": {"x-marqo-index-id": r.request.headers.get("x-marqo-index-id") or (await _index_id(api, name))},
        "catalog": catalog,
        "queries": queries,
        "docs": {d["_id"]: d for d in docs},
    }


async def _index_id(api: httpx.AsyncClient, name: str) -> str:
    return (await api.get(f"/api/v1/indexes/{name}", headers=ADMIN)).json()["indexId"]


def _query_url(images, shop: dict, i: int = 0) -> str:  # type: ignore[no-untyped-def]
    query = shop["queries"][i]
    return images.add(f"/{shop['name']}/queries/{query.id}.jpg", _jpeg(query.image), "image/jpeg")


async def _reverse(api: httpx.AsyncClient, shop: dict, body: object) -> httpx.Response:
    return await api.post(f"/api/v1/indexes/{shop['name']}/reverse-image-search", json=body, headers=shop["headers"])


async def test_finds_the_photographed_product(api: httpx.AsyncClient, images, shop: dict) -> None:
    """Wild photos of look-alike-heavy products: reverse search puts the product first more
    often than Search by Image, and always within the hits (offline random-weight model)."""
    reverse_ranks, sbi_ranks = [], []
    for i, query in enumerate(shop["queries"]):
        url = _query_url(images, shop, i)
        r = await _reverse(api, shop, {"q": url})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["limit"] == 10 and isinstance(body["processingTimeMs"], int)
        hits = body["hits"]
        assert 1 <= len(hits) <= 10
        scores = [h["_score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        ids = [h["_id"] for h in hits]
        reverse_ranks.append(ids.index(query.product_id) if query.product_id in ids else None)
        r = await api.post(
            f"/api/v1/indexes/{shop['name']}/search", json={"q": url, "limit": 10}, headers=shop["headers"]
        )
        ids = [h["_id"] for h in r.json()["hits"]]
        sbi_ranks.append(ids.index(query.product_id) if query.product_id in ids else None)
    assert None not in reverse_ranks, reverse_ranks
    reverse_first = reverse_ranks.count(0)
    assert reverse_first >= 4, (reverse_ranks, sbi_ranks)
    assert reverse_first > sbi_ranks.count(0), (reverse_ranks, sbi_ranks)


async def test_default_hit_fields_and_attributes(api: httpx.AsyncClient, images, shop: dict) -> None:
    url = _query_url(images, shop)
    hit = (await _reverse(api, shop, {"q": url, "limit": 1})).json()["hits"][0]
    # `_match` is not an attribute: a verified hit carries it whatever attributesToRetrieve says
    fields = {"productTitle", "variantTitle", "price", "variantImageUrl", "collections", "_id", "_score"}
    assert set(hit) - {"_match"} == fields
    assert hit["collections"] == shop["docs"][hit["_id"]]["productCollections"]
    hit = (await _reverse(api, shop, {"q": url, "limit": 1, "attributesToRetrieve": ["brand", "nope"]})).json()
    assert set(hit["hits"][0]) - {"_match"} == {"brand", "_id", "_score"}
    hits = (await _reverse(api, shop, {"q": url, "attributesToRetrieve": []})).json()["hits"]
    assert all(set(h) - {"_match"} == {"_id", "_score"} for h in hits)


@pytest.mark.parametrize(("given", "effective"), [(0, 1), (1, 1), (3, 3), (10, 10), (50, 10), (-7, 1), (4.0, 4)])
async def test_limit_is_clamped_and_echoed(api: httpx.AsyncClient, images, shop: dict, given, effective) -> None:  # type: ignore[no-untyped-def]
    body = (await _reverse(api, shop, {"q": _query_url(images, shop), "limit": given})).json()
    assert body["limit"] == effective
    assert len(body["hits"]) == min(effective, len(shop["catalog"]))


@pytest.mark.parametrize("limit", ["5", 2.5, True, None, [3], {"n": 1}])
async def test_non_integer_limit_is_400(api: httpx.AsyncClient, images, shop: dict, limit) -> None:  # type: ignore[no-untyped-def]
    r = await _reverse(api, shop, {"q": _query_url(images, shop), "limit": limit})
    assert r.status_code == 400 and set(r.json()) == {"error", "code"}


async def test_filter_and_vector_ranking_in_one_query(api: httpx.AsyncClient, images, shop: dict) -> None:
    query = shop["queries"][0]
    target = shop["docs"][query.product_id]
    url = _query_url(images, shop)
    r = await _reverse(api, shop, {"q": url, "filter": f"NOT _id:{query.product_id}"})
    assert query.product_id not in [h["_id"] for h in r.json()["hits"]]
    r = await _reverse(api, shop, {"q": url, "filter": f"brand:({target['brand']})", "attributesToRetrieve": ["brand"]})
    assert r.json()["hits"] and all(h["brand"].lower() == target["brand"].lower() for h in r.json()["hits"])
    r = await _reverse(api, shop, {"q": url, "filter": None})
    assert r.status_code == 200
    r = await _reverse(api, shop, {"q": url, "filter": "brand:Nike AND"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_filter"
    assert r.json()["error"].startswith("Error parsing filter:") and "position" in r.json()["error"]


@pytest.mark.parametrize(
    "q",
    [
        None,
        "",
        "red running shoes",
        123,
        ["http://127.0.0.1/a.jpg"],
        "http://127.0.0.1/a.gif",
        "http://127.0.0.1/a.svg",
        "http://127.0.0.1/image",
        "http://127.0.0.1/a.jpg.html",
        "ftp://127.0.0.1/a.jpg",
        "file:///etc/a.png",
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png;base64,***not-base64***",
        "data:image/png,rawbytes",
        "data:;base64,aGVsbG8=",
    ],
)
async def test_q_must_be_an_image(api: httpx.AsyncClient, shop: dict, q) -> None:  # type: ignore[no-untyped-def]
    body = {} if q is None else {"q": q}
    r = await _reverse(api, shop, body)
    assert r.status_code == 400 and r.json()["error"] == Q_ERROR, (q, r.text)


async def test_accepted_q_spellings(api: httpx.AsyncClient, images, shop: dict) -> None:
    data = product_image(3)
    upper = images.add(f"/{shop['name']}/UPPER.JPEG", data, "image/jpeg")
    r = await _reverse(api, shop, {"q": upper + "?w=200&h=100#frag"})
    assert r.status_code == 200, r.text
    for ext in (".webp", ".png", ".tiff", ".avif"):
        url = images.add(f"/{shop['name']}/x{ext}", data, "image/jpeg")  # bytes decide the format, not the name
        assert (await _reverse(api, shop, {"q": url})).status_code == 200
    odd_mime = data_url(data, "image/x-anything")
    assert (await _reverse(api, shop, {"q": odd_mime})).status_code == 200


@pytest.mark.parametrize("value", [1, True, ["brand:x"], {"brand": "x"}])
async def test_filter_must_be_a_string(api: httpx.AsyncClient, images, shop: dict, value) -> None:  # type: ignore[no-untyped-def]
    r = await _reverse(api, shop, {"q": _query_url(images, shop), "filter": value})
    assert r.status_code == 400 and r.json()["error"] == "filter must be a string"


@pytest.mark.parametrize("value", ["productTitle", None, [1], ["a", 2], {"a": 1}, 3])
async def test_attributes_must_be_strings(api: httpx.AsyncClient, images, shop: dict, value) -> None:  # type: ignore[no-untyped-def]
    r = await _reverse(api, shop, {"q": _query_url(images, shop), "attributesToRetrieve": value})
    assert r.status_code == 400 and r.json()["error"] == "attributesToRetrieve must be an array of strings"


async def test_unauthorized_and_disabled(api: httpx.AsyncClient, images, shop: dict) -> None:
    url = _query_url(images, shop)
    path = f"/api/v1/indexes/{shop['name']}/reverse-image-search"
    for headers in ({}, {"x-marqo-index-id": "wrong"}):
        r = await api.post(path, json={"q": url}, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    name = f"rev-off-{secrets.token_hex(3)}"
    created = (await api.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN)).json()
    r = await api.post(
        f"/api/v1/indexes/{name}/reverse-image-search",
        json={"q": url},
        headers={"x-marqo-index-id": created["indexId"]},
    )
    assert r.status_code == 404 and r.json()["error"] == "reverse image search is not enabled for this index"


async def test_unfetchable_images_say_why(api: httpx.AsyncClient, images, shop: dict) -> None:
    missing = images.url(f"/{shop['name']}/missing.jpg")
    r = await _reverse(api, shop, {"q": missing})
    assert r.status_code == 400 and "404" in r.json()["error"]
    not_image = images.add(f"/{shop['name']}/text.png", b"hello world", "image/png")
    r = await _reverse(api, shop, {"q": not_image})
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    r = await _reverse(api, shop, {"q": "http://10.0.0.1/x.jpg"})
    assert r.status_code == 400 and "private" in r.json()["error"]


@pytest.mark.parametrize("model", list(MODELS))
async def test_backfill_when_flag_turned_on(api: httpx.AsyncClient, images, pool, model: str) -> None:  # type: ignore[no-untyped-def]
    name = f"rev-late-{secrets.token_hex(3)}"
    created = (await api.post(f"/api/v1/indexes/{name}", json={"model": MODELS[model]}, headers=ADMIN)).json()
    docs = [
        {"_id": f"p{i}", "productTitle": f"P{i}", "price": 1, "variantImageUrl": data_url(product_image(100 + i))}
        for i in range(6)
    ]
    docs.append(
        {
            "_id": "gone",
            "productTitle": "G",
            "price": 1,
            "variantImageUrl": images.add(f"/{name}/g.jpg", product_image(1)),
        }
    )
    await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    images.routes.pop(f"/{name}/g.jpg")  # the image disappears before the backfill
    index_pk = await pool.fetchval("SELECT pk FROM indexes WHERE name = $1", name)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM local_features f JOIN products p ON p.pk = f.product_pk WHERE p.index_pk = $1",
            index_pk,
        )
        == 0
    )
    aggregates = f"SELECT count(local_aggregate) FROM vectors_{int(index_pk)}"
    colours = f"SELECT count(colour) FROM vectors_{int(index_pk)}"
    assert await pool.fetchval(aggregates) == 0 and await pool.fetchval(colours) == 0
    r = await api.patch(
        f"/api/v1/indexes/{name}/settings", json={"reverseImageSearch": {"enabled": True}}, headers=ADMIN
    )
    assert r.status_code == 200
    stats = (await api.get(f"/api/v1/indexes/{name}/stats", headers=ADMIN)).json()["reverseImageSearch"]
    assert stats["enabled"] is True
    # Search works during the backfill (global score only for products without features).
    r = await api.post(
        f"/api/v1/indexes/{name}/reverse-image-search",
        json={"q": data_url(product_image(101))},
        headers={"x-marqo-index-id": created["indexId"]},
    )
    assert r.status_code == 200 and r.json()["hits"][0]["_id"] == "p1"
    await api.app.state.services.backfill.drain()  # type: ignore[attr-defined]
    stats = (await api.get(f"/api/v1/indexes/{name}/stats", headers=ADMIN)).json()["reverseImageSearch"]
    assert stats == {"enabled": True, "featuresReady": 6, "featuresPending": 0, "featuresFailed": 1, "ready": True}
    assert await pool.fetchval(aggregates) == 6  # the backfill stores each product's keypoint aggregate too
    assert await pool.fetchval(colours) == 6  # and its colour descriptor
    failed = await pool.fetchrow("SELECT error FROM lookalike_failed_products WHERE index_name = $1", name)
    assert "404" in failed["error"]

    # The colour cue on (a weight and a colour leg): a product without a descriptor is still found.
    knobs = {"colourWeight": 2.0, "colourPool": 10}
    r = await api.patch(f"/api/v1/indexes/{name}/settings", json={"reverseImageSearch": knobs}, headers=ADMIN)
    assert r.status_code == 200, r.text
    p2 = await pool.fetchval("SELECT pk FROM products WHERE index_pk = $1 AND product_id = 'p2'", index_pk)
    await pool.execute(f"UPDATE vectors_{int(index_pk)} SET colour = NULL WHERE product_pk = $1", p2)
    for product, seed in (("p1", 101), ("p2", 102)):
        r = await api.post(
            f"/api/v1/indexes/{name}/reverse-image-search",
            json={"q": data_url(product_image(seed))},
            headers={"x-marqo-index-id": created["indexId"]},
        )
        assert r.status_code == 200 and r.json()["hits"][0]["_id"] == product, r.text
    # deleted with its product
    r = await api.request("DELETE", f"/api/v1/indexes/{name}/documents", json={"ids": ["p1"]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert await pool.fetchval(colours) == 4


def test_processing_is_deterministic() -> None:
    """The generator the contract tests lean on is deterministic (same seed, same pixels)."""
    a = wild.generate_catalog(3, seed=5)
    b = wild.generate_catalog(3, seed=5)
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b, strict=True))


async def test_keypoint_aggregates_are_stored_and_retrieve_the_product(shop: dict, pool) -> None:  # type: ignore[no-untyped-def]
    """Every product with local features has its aggregate; the crop-box aggregates of a wild
    photo retrieve the photographed product through SQL, under a filter, on both scan paths."""
    record = await storage_indexes.get_index(pool, shop["name"])
    assert record is not None
    table = record.vectors_table
    assert await pool.fetchval(f"SELECT count(local_aggregate) FROM {table}") == len(shop["catalog"])
    found_first = 0
    for query in shop["queries"]:
        features = local_features.extract_query_features(query.image)
        boxes = aggregate.box_aggregates(features, crops.query_boxes(query.image))
        family = next(c.family for c in shop["catalog"] if c.id == query.product_id)
        where = parse_filter(f"productCollections:{family}")
        best: dict[str, float] = {}
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            for vector in boxes:
                rows = await search_sql.nearest(
                    conn, record, vector, where, 5, column="local_aggregate"
                )
                assert all(family in r.doc["productCollections"] for r in rows)
                for r in rows:
                    best[r.product_id] = max(best.get(r.product_id, -1.0), r.score)
        found_first += max(best, key=best.__getitem__) == query.product_id
    assert found_first >= len(shop["queries"]) // 2, found_first
    # the HNSW path uses the aggregate's own index
    sql, values = search_sql.nearest_sql(
        record, boxes[0], None, 10, exact=False, column="local_aggregate"
    )
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await search_sql.configure_scan(conn, exact=False, ef_search=100)
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *values))
    assert f"{table}_local_hnsw" in plan, plan


async def test_colour_descriptors_are_stored_and_retrieve_the_product(shop: dict, pool) -> None:  # type: ignore[no-untyped-def]
    """Every product with local features has the colour descriptor of the image it was fetched as;
    the crop boxes' colours of a wild photo retrieve the product through SQL, by the colour index."""
    record = await storage_indexes.get_index(pool, shop["name"])
    assert record is not None
    table = record.vectors_table
    rows = await pool.fetch(
        f"SELECT p.product_id, v.colour::real[] AS c FROM {table} v JOIN products p ON p.pk = v.product_pk"
    )
    stored = {r["product_id"]: np.asarray(r["c"], np.float32) for r in rows if r["c"] is not None}
    assert len(stored) == len(shop["catalog"])
    for item in shop["catalog"][:4]:
        expected = colour.catalog_colour(Image.open(io.BytesIO(_jpeg(item.image))))
        assert float(stored[item.id] @ expected) > 0.999  # halfvec precision
    in_top = 0
    for query in shop["queries"]:
        boxes = colour.box_colours(query.image, crops.query_boxes(query.image))
        best: dict[str, float] = {}
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            for vector in boxes:
                for r in await search_sql.nearest(conn, record, vector, None, 8, column="colour"):
                    best[r.product_id] = max(best.get(r.product_id, -1.0), r.score)
        in_top += query.product_id in sorted(best, key=best.__getitem__, reverse=True)[:8]
    assert in_top >= len(shop["queries"]) // 2, in_top
    sql, values = search_sql.nearest_sql(record, boxes[0], None, 10, exact=False, column="colour")
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await search_sql.configure_scan(conn, exact=False, ef_search=100)
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *values))
    assert f"{table}_colour_hnsw" in plan, plan


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


async def test_match_box_shows_where_the_product_is(api: httpx.AsyncClient, images, shop: dict) -> None:
    """The top hit's `_match.box` overlaps the pasted product (IoU >= 0.5) on >= 90% of the wild
    queries whose top hit is right; every `_match` lies inside the photo."""
    right, boxed = 0, 0
    for query in wild.generate_queries(shop["catalog"], 16, seed=21):
        url = images.add(f"/{shop['name']}/match/{query.id}.jpg", _jpeg(query.image), "image/jpeg")
        hits = (await _reverse(api, shop, {"q": url})).json()["hits"]
        fw, fh = query.image.size
        for hit in hits:
            if "_match" in hit:
                x0, y0, x1, y1 = hit["_match"]["box"]
                assert 0 <= x0 < x1 <= fw and 0 <= y0 < y1 <= fh, hit
                assert isinstance(hit["_match"]["inliers"], int) and hit["_match"]["inliers"] > 0
        if hits[0]["_id"] != query.product_id:
            continue
        right += 1
        match = hits[0].get("_match")
        boxed += match is not None and _iou(match["box"], query.params["paste_box"]) >= 0.5
    assert right >= 10, right
    assert boxed >= 0.9 * right, (boxed, right)


async def test_match_box_is_in_the_upright_photo(api: httpx.AsyncClient, images, shop: dict) -> None:
    """A photo stored sideways with an EXIF orientation tag: the box is in the upright photo's pixels."""
    query = shop["queries"][0]
    upright = (await _reverse(api, shop, {"q": _query_url(images, shop), "limit": 1})).json()["hits"][0]
    sideways = query.image.transpose(Image.Transpose.ROTATE_90)  # EXIF 6 turns it back upright
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    sideways.save(out, "JPEG", quality=90, exif=exif)
    url = images.add(f"/{shop['name']}/sideways.jpg", out.getvalue(), "image/jpeg")
    hit = (await _reverse(api, shop, {"q": url, "limit": 1})).json()["hits"][0]
    assert hit["_id"] == upright["_id"] and "_match" in upright and "_match" in hit
    assert _iou(hit["_match"]["box"], upright["_match"]["box"]) >= 0.8, (hit, upright)


async def test_unverified_hits_carry_no_match(api: httpx.AsyncClient, shop: dict) -> None:
    """A featureless photo verifies nothing: hits, but none with `_match`."""
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 130, 140)).save(out, "PNG")
    r = await _reverse(api, shop, {"q": data_url(out.getvalue(), "image/png")})
    assert r.status_code == 200 and r.json()["hits"]
    assert all("_match" not in h for h in r.json()["hits"])


def region_scores(regions: list[dict], products: list[dict], overlap: float) -> tuple[int, int]:  # type: ignore[type-arg]
    """(products found, false regions): a product is found when it is some region's top hit and that
    region's box overlaps its paste box by `overlap` IoU; any other region is false."""
    found: set[str] = set()
    false = 0
    for region in regions:
        top = region["hits"][0]["_id"] if region["hits"] else None
        truth = next((p for p in products if p["product_id"] == top), None)
        if truth is not None and top not in found and _iou(region["box"], truth["paste_box"]) >= overlap:
            found.add(top)
        else:
            false += 1
    return len(found), false


async def test_regions_find_several_products(api: httpx.AsyncClient, images, shop: dict) -> None:
    """Photos of 2-4 catalog products: `regions` finds most of them, each where it is."""
    found = total = false = 0
    for query in wild.generate_multi_queries(shop["catalog"], 6, seed=3):
        url = images.add(f"/{shop['name']}/multi/{query.id}.jpg", _jpeg(query.image), "image/jpeg")
        r = await _reverse(api, shop, {"q": url, "regions": True, "limit": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        plain = (await _reverse(api, shop, {"q": url, "limit": 3})).json()
        assert [h["_id"] for h in body["hits"]] == [h["_id"] for h in plain["hits"]]  # hits stay the overall list
        for region in body["regions"]:
            assert 1 <= len(region["hits"]) <= 3
            scores = [h["_score"] for h in region["hits"]]
            assert scores == sorted(scores, reverse=True)
        f, x = region_scores(body["regions"], query.params["products"], 0.5)
        found, false, total = found + f, false + x, total + len(query.product_ids)
    print(f"regions: {found}/{total} products found, {false} false regions in 6 photos")
    assert found >= 0.5 * total, (found, total)
    assert false <= 6, false


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
async def test_regions_and_explain_must_be_booleans(api: httpx.AsyncClient, images, shop: dict, value) -> None:  # type: ignore[no-untyped-def]
    for flag in ("regions", "explain"):
        r = await _reverse(api, shop, {"q": _query_url(images, shop), flag: value})
        assert r.status_code == 400 and r.json() == {"error": f"{flag} must be a boolean", "code": f"invalid_{flag}"}


async def test_explain_returns_the_inlier_pairs(api: httpx.AsyncClient, images, shop: dict) -> None:
    url = _query_url(images, shop)
    plain = (await _reverse(api, shop, {"q": url})).json()["hits"]
    explained = (await _reverse(api, shop, {"q": url, "explain": True})).json()["hits"]
    assert [h["_id"] for h in explained] == [h["_id"] for h in plain]
    verified = [h for h in explained if "_match" in h]
    assert verified and all("pairs" not in h.get("_match", {}) for h in plain)
    for hit in verified:
        match = hit["_match"]
        x0, y0, x1, y1 = match["box"]
        cw, ch = match["catalogSize"]
        assert len(match["pairs"]) >= match["inliers"]  # distinct locations <= inlier pairs
        for qx, qy, cx, cy in match["pairs"]:
            assert x0 - 2 <= qx <= x1 + 2 and y0 - 2 <= qy <= y1 + 2 and 0 <= cx <= cw and 0 <= cy <= ch


async def test_early_exit_returns_the_hits_of_full_verification(api: httpx.AsyncClient, images, shop: dict) -> None:
    """Verification that stops once the top hits are settled (verifySettle) returns them exactly
    as verifying all verifyTop candidates (verifySettle 0) does, on generated wild photos."""
    settings = f"/api/v1/indexes/{shop['name']}/settings"

    async def hits_with(settle: int) -> list[list[tuple[str, float]]]:
        r = await api.patch(settings, json={"reverseImageSearch": {"verifySettle": settle}}, headers=ADMIN)
        assert r.status_code == 200, r.text
        out = []
        for i in range(len(shop["queries"])):
            r = await _reverse(api, shop, {"q": _query_url(images, shop, i)})
            assert r.status_code == 200, r.text
            out.append([(h["_id"], h["_score"]) for h in r.json()["hits"]])
        return out

    try:
        full, first, ten = await hits_with(0), await hits_with(1), await hits_with(10)
    finally:
        await api.patch(settings, json={"reverseImageSearch": {"verifySettle": 0}}, headers=ADMIN)
    assert [h[:1] for h in first] == [h[:1] for h in full]
    assert ten == full  # limit 10: the whole page is settled
    r = await api.patch(settings, json={"reverseImageSearch": {"verifySettle": -1}}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["code"] == "invalid_settings", r.text


async def test_crops_on_demand_score_as_if_embedded_with_the_photo(
    api: httpx.AsyncClient, images, shop: dict, pool
) -> None:  # type: ignore[no-untyped-def]
    """With `queryCrops` "auto", the crops past the whole photo are embedded only when verification
    leaves the answer open. A photo whose best hit is settled keeps that hit; an open one ends with
    the pool, the scores and (at least) the verifications of embedding every crop with the photo."""
    from app.contract.search import ReverseSearchRequest
    from app.domain.rerank import answer_settled
    from app.domain.search import StageTimer

    service = api.app.state.services.reverse  # type: ignore[attr-defined]
    record = await storage_indexes.get_index(pool, shop["name"])
    assert record is not None and record.reverse_search.get("queryCrops", "auto") == "auto"
    plain = Image.new("RGB", (320, 240), (120, 130, 140))  # nothing to verify: the crops are needed
    photos = [_query_url(images, shop, i) for i in range(len(shop["queries"]))]
    photos.append(images.add(f"/{shop['name']}/plain.jpg", _jpeg(plain), "image/jpeg"))
    settled = widened = 0
    for url in photos:
        request = ReverseSearchRequest.parse({"q": url})
        on_demand, all_crops = StageTimer(), StageTimer()
        query, lazy = await service.gather(record, request, on_demand, adaptive_crops=True)
        _, eager = await service.gather(record, request, all_crops, adaptive_crops=False)
        assert query.n_crops > 1  # the test model is fast: auto embeds several crops
        if "crops" not in on_demand.stages:
            settled += 1
            top = lazy.ranked(query.params)[0][0]
            assert answer_settled(lazy.verifications[top], query.params)
            assert top == eager.ranked(query.params)[0][0]
            continue
        widened += 1
        assert lazy.candidates.keys() == eager.candidates.keys()
        for key, candidate in eager.candidates.items():
            assert lazy.candidates[key].global_score == pytest.approx(candidate.global_score, abs=2e-3), key
            assert lazy.candidates[key].aggregate_score == pytest.approx(candidate.aggregate_score, abs=2e-3)
            assert lazy.candidates[key].colour_score == pytest.approx(candidate.colour_score, abs=2e-3)
        assert eager.whole <= lazy.whole
    assert settled and widened, (settled, widened)


async def test_regions_residual_passes_score_by_colour(
    api: httpx.AsyncClient, images, shop: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The passes over what is left of the photo retrieve and score by the left-over boxes' colours,
    as the whole photo's pass does (without them, new candidates lost their colour term)."""
    from app.domain.reverse import ReverseSearchService

    calls: list[tuple[int, int]] = []  # (box aggregates, box colours) per retrieval
    real = ReverseSearchService._retrieve

    async def spy(self, conn, query, embeddings, aggregates, pool_size, aggregate_pool, colours=None):  # type: ignore[no-untyped-def]
        calls.append((len(aggregates), 0 if colours is None else len(colours)))
        return await real(self, conn, query, embeddings, aggregates, pool_size, aggregate_pool, colours)

    monkeypatch.setattr(ReverseSearchService, "_retrieve", spy)
    residual_passes = 0
    for query in wild.generate_multi_queries(shop["catalog"], 4, seed=3):
        url = images.add(f"/{shop['name']}/multi-colour/{query.id}.jpg", _jpeg(query.image), "image/jpeg")
        calls.clear()
        r = await _reverse(api, shop, {"q": url, "regions": True, "limit": 3})
        assert r.status_code == 200, r.text
        assert calls and all(colours > 0 for _, colours in calls), calls
        residual_passes += len(calls) - 1
    assert residual_passes >= 1


async def test_regions_keep_each_candidates_strongest_verification(
    api: httpx.AsyncClient, images, shop: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`regions` may verify a candidate again (against what a residual pass left of the photo, or
    in the regions' own pass): its strongest verification is what the regions see, and no residual
    pass verifies again what an earlier one already tried (less of the photo is left each time)."""
    from app.domain.reverse import ReverseSearchService
    from app.vision import local_features

    real_verify, real_residual, real_match = (
        ReverseSearchService._verify,
        ReverseSearchService._residual_pass,
        local_features.verify_candidates,
    )
    state: dict = {"residual": False, "last": {}}
    strongest: dict = {}  # key -> best colour-weighted inliers over all its verifications
    residual_tries: dict = {}  # key -> residual passes that verified it

    def match(query, candidates, *args):  # type: ignore[no-untyped-def]
        # verification is shared out over the CPU workers: one call per share, by candidate
        out = real_match(query, candidates, *args)
        state["last"].update((id(c), v) for c, v in zip(candidates, out, strict=True))
        return out

    async def verify(self, gathered, keys, features):  # type: ignore[no-untyped-def]
        state["last"] = {}
        await real_verify(self, gathered, keys, features)
        verified = [k for k in keys if k in gathered.details and gathered.details[k].features is not None]
        assert len(state["last"]) == len(verified)
        for key in verified:
            v = state["last"][id(gathered.features_of[key])]
            strength = v.effective_inliers if v.homography_ok else -1.0
            strongest[key] = max(strongest.get(key, -1.0), strength)
            if state["residual"]:
                residual_tries[key] = residual_tries.get(key, 0) + 1
        state["gathered"] = gathered

    async def residual(self, *args):  # type: ignore[no-untyped-def]
        state["residual"] = True
        try:
            return await real_residual(self, *args)
        finally:
            state["residual"] = False

    monkeypatch.setattr(local_features, "verify_candidates", match)
    monkeypatch.setattr(ReverseSearchService, "_verify", verify)
    monkeypatch.setattr(ReverseSearchService, "_residual_pass", residual)
    again = 0
    for query in wild.generate_multi_queries(shop["catalog"], 6, seed=3):
        url = images.add(f"/{shop['name']}/multi-strongest/{query.id}.jpg", _jpeg(query.image), "image/jpeg")
        strongest.clear()
        residual_tries.clear()
        r = await _reverse(api, shop, {"q": url, "regions": True, "limit": 3})
        assert r.status_code == 200, r.text
        final = state["gathered"].verifications
        for key, best in strongest.items():
            v = final[key]
            assert (v.effective_inliers if v.homography_ok else -1.0) == best, key
        assert all(n == 1 for n in residual_tries.values()), residual_tries
        again += sum(1 for key in strongest if key in final)
    assert again


async def test_region_boxes_are_described_by_the_regions_keypoints(
    api: httpx.AsyncClient, images, shop: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each region's keypoint aggregate (its crop's retrieval by local features) comes from the
    regions stage's keypoints (more of them, at more resolution), not the single-product search's."""
    from app.domain import reverse
    from app.vision import aggregate

    real_features, real_aggregates = reverse.region_features, aggregate.box_aggregates
    seen: dict = {"region": None, "single_box": []}

    def features(image):  # type: ignore[no-untyped-def]
        seen["region"] = real_features(image)
        return seen["region"]

    def aggregates(feats, boxes):  # type: ignore[no-untyped-def]
        if seen["region"] is not None and len(boxes) == 1:
            seen["single_box"].append(feats is seen["region"])
        return real_aggregates(feats, boxes)

    monkeypatch.setattr(reverse, "region_features", features)
    monkeypatch.setattr(aggregate, "box_aggregates", aggregates)
    for query in wild.generate_multi_queries(shop["catalog"], 3, seed=3):
        url = images.add(f"/{shop['name']}/multi-aggregate/{query.id}.jpg", _jpeg(query.image), "image/jpeg")
        seen["region"] = None
        r = await _reverse(api, shop, {"q": url, "regions": True, "limit": 3})
        assert r.status_code == 200, r.text
    assert seen["single_box"] and all(seen["single_box"]), seen["single_box"]
def test_verification_is_shared_out_evenly_over_the_cpu_workers() -> None:
    """Every candidate in exactly one share; shares of alike size mix; few candidates stay on one."""
    from app.domain.reverse import MIN_VERIFY_SHARE, verification_shares

    sizes = [256, 10, 200, 40, 256, 90, 5, 180] * 8  # 64 candidates
    shares = verification_shares(sizes, 2)
    assert len(shares) == 2
    assert sorted(i for share in shares for i in share) == list(range(len(sizes)))
    totals = [sum(sizes[i] for i in share) for share in shares]
    assert max(totals) - min(totals) <= max(sizes)
    few = sizes[: MIN_VERIFY_SHARE * 2 - 1]
    assert verification_shares(few, 2) == [sorted(range(len(few)), key=lambda i: few[i])]
    assert verification_shares(sizes, 1) == [sorted(range(len(sizes)), key=lambda i: sizes[i])]
    assert verification_shares([], 2) == []
