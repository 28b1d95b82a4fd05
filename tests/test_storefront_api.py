"""Storefront endpoints end to end: facets/sortBy/collapse on /search, /collections (POST and
GET ?body=), /recommendations/similar, and the misuse 400s."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN
from tests.helpers import TEST_MODEL, data_url, product, product_image

DOCS = [
    product(
        f"s{i}",
        data_url(product_image(700 + i, 64)),
        productTitle=["Trail Runner Shoe", "Leather Boot", "Canvas Sneaker"][i % 3] + f" {i}",
        brand=["Acme", "Bolt", "Cargo"][i % 3],
        price=float(10 + 7 * i),
        parentProductId=f"parent{i // 2}",
        productCollections=["shoes"] + (["sale"] if i % 2 else []),
    )
    for i in range(12)
]


@pytest.fixture(scope="module")
async def shop(api: httpx.AsyncClient) -> dict[str, Any]:
    name = f"shop-{secrets.token_hex(4)}"
    created = await api.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN)
    assert created.status_code == 200, created.text
    added = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": DOCS}, headers=ADMIN)
    assert added.json()["errors"] is False, added.text
    return {"name": name, "headers": {"x-marqo-index-id": created.json()["indexId"]}}


async def _post(api: httpx.AsyncClient, shop: dict[str, Any], path: str, body: Any) -> httpx.Response:
    return await api.post(f"/api/v1/indexes/{shop['name']}{path}", json=body, headers=shop["headers"])


async def test_search_facets_sort_and_collapse(api: httpx.AsyncClient, shop) -> None:
    body = {
        "filter": "brand IN (Acme, Bolt)",
        "limit": 3,
        "facets": {
            "fields": {
                "brand": {"type": "string", "excludeTerms": ["brand IN (Acme, Bolt)"]},
                "collections": {"type": "array"},
                "price": {"type": "number", "ranges": [{"to": 40}, {"from": 40, "name": "40+"}]},
                "parentProductId": {"type": "string", "maxResults": 2, "order": "asc"},
            }
        },
        "sortBy": {"fields": [{"fieldName": "price", "order": "desc"}]},
    }
    r = await _post(api, shop, "/search", body)
    assert r.status_code == 200, r.text
    got = r.json()
    matched = [d for d in DOCS if d["brand"] in ("Acme", "Bolt")]
    assert [h["_id"] for h in got["hits"]] == [d["_id"] for d in sorted(matched, key=lambda d: -d["price"])][:3]
    assert got["facets"]["brand"] == {"Acme": {"count": 4}, "Bolt": {"count": 4}, "Cargo": {"count": 4}}
    assert got["facets"]["collections"] == {"shoes": {"count": 8}, "sale": {"count": 4}}
    assert got["facets"]["price"] == {
        "*:40": {"count": sum(d["price"] < 40 for d in matched)},
        "40+": {"count": sum(d["price"] >= 40 for d in matched)},
    }
    assert len(got["facets"]["parentProductId"]) == 2
    stats = (await _post(api, shop, "/search", {"facets": {"fields": {"price": {"type": "number"}}}})).json()
    prices = [d["price"] for d in DOCS]
    assert stats["facets"]["price"] == {
        "min": min(prices),
        "max": max(prices),
        "avg": pytest.approx(sum(prices) / 12),
        "sum": sum(prices),
        "count": 12,
    }
    collapsed = await _post(
        api,
        shop,
        "/search",
        {
            "limit": 20,
            "collapseFields": [
                {"name": "parentProductId", "sortBy": {"fields": [{"fieldName": "price", "order": "desc"}]}}
            ],
            "facets": {"fields": {"brand": {"type": "string"}}},
        },
    )
    hits = collapsed.json()["hits"]
    assert [h["_id"] for h in hits] == sorted((f"s{2 * k + 1}" for k in range(6)), key=lambda i: i)
    assert sum(v["count"] for v in collapsed.json()["facets"]["brand"].values()) >= 6
    # no facets asked: no facets key (the seed's response shape)
    assert "facets" not in (await _post(api, shop, "/search", {"q": "*"})).json()


async def test_text_search_finds_misspellings_and_partial_words(api: httpx.AsyncClient, shop) -> None:
    r = await _post(api, shop, "/search", {"q": "lether bo", "limit": 5})
    hits = r.json()["hits"]
    assert hits and hits[0]["productTitle"].startswith("Leather Boot")
    scores = [h["_score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    partial = (await _post(api, shop, "/search", {"q": "leather boot unicorn", "limit": 12})).json()["hits"]
    assert {h["_id"] for h in partial} >= {"s1", "s4", "s7", "s10"}
    filtered = (await _post(api, shop, "/search", {"q": "shoe", "filter": "price:[* TO 40]"})).json()["hits"]
    assert [h["_id"] for h in filtered] == ["s0", "s3"]


async def test_facets_of_text_and_image_queries_count_every_match(api: httpx.AsyncClient, shop) -> None:
    """An unfiltered text query's hits and facets (two statements at once in the service) and an
    image query's facets (every product the filter lets through: a vector ranking matches all)."""
    facets = {"fields": {"brand": {"type": "string"}, "price": {"type": "number", "ranges": [{"to": 40}]}}}
    text = await _post(api, shop, "/search", {"q": "leather boot", "limit": 2, "facets": facets})
    assert text.status_code == 200, text.text
    boots = [d for d in DOCS if d["productTitle"].startswith("Leather Boot")]
    # the titles score alike: ties in _id order (bytes)
    assert [h["_id"] for h in text.json()["hits"]] == sorted(d["_id"] for d in boots)[:2]
    assert text.json()["facets"] == {
        "brand": {"Bolt": {"count": len(boots)}},
        "price": {"*:40": {"count": sum(d["price"] < 40 for d in boots)}},
    }
    image = await _post(api, shop, "/search", {"q": DOCS[0]["variantImageUrl"], "limit": 3, "facets": facets})
    assert image.status_code == 200, image.text
    assert len(image.json()["hits"]) == 3
    assert image.json()["facets"]["brand"] == {b: {"count": 4} for b in ("Acme", "Bolt", "Cargo")}


async def test_collections_post_and_get(api: httpx.AsyncClient, shop) -> None:
    body = {
        "collectionName": "sale",
        "limit": 3,
        "filter": "price:[20 TO *]",
        "sortBy": {"fields": [{"fieldName": "price", "order": "desc"}]},
        "facets": {"fields": {"brand": {"type": "string"}}},
        "attributesToRetrieve": ["price"],
    }
    r = await _post(api, shop, "/collections", body)
    assert r.status_code == 200, r.text
    sale = sorted(
        (d for d in DOCS if "sale" in d["productCollections"] and d["price"] >= 20), key=lambda d: -d["price"]
    )
    assert [h["_id"] for h in r.json()["hits"]] == [d["_id"] for d in sale[:3]]
    assert set(r.json()["hits"][0]) == {"_id", "price"}
    assert sum(v["count"] for v in r.json()["facets"]["brand"].values()) == len(sale)
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = encode(json.dumps(body).encode()).decode().rstrip("=")
        g = await api.get(
            f"/api/v1/indexes/{shop['name']}/collections", params={"body": encoded}, headers=shop["headers"]
        )
        assert g.status_code == 200 and g.json()["hits"] == r.json()["hits"]
    for bad in [None, "%%%", base64.b64encode(b"not json").decode(), base64.b64encode(b"[1]").decode()]:
        params = {} if bad is None else {"body": bad}
        g = await api.get(f"/api/v1/indexes/{shop['name']}/collections", params=params, headers=shop["headers"])
        assert g.status_code == 400, (bad, g.text)


async def test_similar_from_stored_vectors(api: httpx.AsyncClient, shop) -> None:
    r = await _post(api, shop, "/recommendations/similar", {"documentIds": ["s0", "s1"], "limit": 5})
    assert r.status_code == 200, r.text
    ids = [h["_id"] for h in r.json()["hits"]]
    assert len(ids) == 5 and not {"s0", "s1"} & set(ids)
    scores = [h["_score"] for h in r.json()["hits"]]
    assert scores == sorted(scores, reverse=True)
    only_acme = await _post(api, shop, "/recommendations/similar", {"documentIds": ["s0"], "filter": "brand:Acme"})
    assert {h["_id"] for h in only_acme.json()["hits"]} == {"s3", "s6", "s9"}
    missing = await _post(api, shop, "/recommendations/similar", {"documentIds": ["s0", "nope"]})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "code", "fragment"),
    [
        (
            "/search",
            {"facets": {"fields": {"brand": {"type": "string", "ranges": [{"to": 1}]}}}},
            "invalid_facets",
            "only allowed on number",
        ),
        (
            "/search",
            {"facets": {"fields": {"price": {"type": "number", "ranges": [{"to": 10}, {"from": 5}]}}}},
            "invalid_facets",
            "overlap",
        ),
        (
            "/search",
            {"facets": {"fields": {"brand": {"type": "string", "excludeTerms": ["brand:Acme"]}}}},
            "invalid_facets",
            "need a filter",
        ),
        (
            "/search",
            {
                "filter": "brand:Bolt",
                "facets": {"fields": {"brand": {"type": "string", "excludeTerms": ["brand:Acme"]}}},
            },
            "invalid_facets",
            "does not appear",
        ),
        ("/search", {"facets": {"fields": {"brand": {"type": "text"}}}}, "invalid_facets", "type"),
        (
            "/search",
            {"facets": {"fields": {"brand": {"type": "string", "maxResults": 0}}}},
            "invalid_facets",
            "maxResults",
        ),
        ("/search", {"facets": {"fields": {}}}, "invalid_facets", "1 to 32"),
        ("/search", {"facets": []}, "invalid_facets", "object"),
        ("/search", {"sortBy": {"fields": [{"fieldName": f"f{i}"} for i in range(4)]}}, "invalid_sort", "3"),
        ("/search", {"sortBy": {"fields": [{"fieldName": "price", "missing": "middle"}]}}, "invalid_sort", "missing"),
        ("/search", {"collapseFields": [{"name": "a"}, {"name": "b"}]}, "invalid_collapse", "exactly one"),
        ("/search", {"collapseFields": {"name": "a"}}, "invalid_collapse", "exactly one"),
        ("/search", {"facetz": {"fields": {}}}, "unknown_parameter", "facetz"),
        # names reach PostgreSQL, which cannot store NUL (found by the schemathesis run: a 500)
        ("/search", {"collapseFields": [{"name": "a\x00b"}]}, "invalid_collapse", "NUL"),
        ("/search", {"sortBy": {"fields": [{"fieldName": "\x00"}]}}, "invalid_sort", "NUL"),
        ("/search", {"facets": {"fields": {"br\x00and": {"type": "string"}}}}, "invalid_facets", "NUL"),
        (
            "/search",
            {"facets": {"fields": {"price": {"type": "number", "ranges": [{"to": 5, "name": "\x00"}]}}}},
            "invalid_facets",
            "NUL",
        ),
        (
            "/search",
            {"filter": "brand:Acme", "facets": {"fields": {"brand": {"type": "string", "excludeTerms": ["\x00"]}}}},
            "invalid_facets",
            "NUL",
        ),
        ("/collections", {"collectionName": "x", "sortBy": {"fields": [{"fieldName": "\x00"}]}}, "invalid_sort", "NUL"),
        ("/collections", {}, "invalid_collection", "collectionName"),
        ("/collections", {"collectionName": "x", "facetz": {}}, "unknown_parameter", "facetz"),
        ("/collections", {"collectionName": "x", "limit": 0}, "invalid_limit", "limit"),
        ("/recommendations/similar", {"documentIds": []}, "invalid_document_ids", "1 to 10"),
        ("/recommendations/similar", {"documentIds": [f"s{i}" for i in range(11)]}, "invalid_document_ids", "1 to"),
        ("/recommendations/similar", {"documentIds": ["s0"], "limit": 101}, "invalid_limit", "100"),
    ],
)
async def test_misuse_is_a_400(api: httpx.AsyncClient, shop, path, body, code, fragment) -> None:
    r = await _post(api, shop, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code and fragment in r.json()["error"], r.json()
