"""/openapi.json describes every endpoint, and real responses match it.

Every response the suite's `api` client receives is validated by the autouse hook in
conftest.py; the walk below makes sure each endpoint, success and error, is exercised
at least once here too.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import httpx
import jsonschema
import pytest
from starlette.routing import Mount, Route

from app.config import Settings
from app.http.openapi import openapi_document
from app.main import routes
from tests.conftest import ADMIN, OpenApiValidator, api_settings, running_app
from tests.helpers import TEST_MODEL, data_url, product, product_image


def test_document_is_openapi_31_with_valid_schemas() -> None:
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    refs = set(re.findall(r"#/components/schemas/(\w+)", repr(doc)))
    assert refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op["responses"], (method, path)
            for param in re.findall(r"\{(\w+)\}", path):
                declared = [p["name"] for p in item.get("parameters", []) + op.get("parameters", [])]
                assert param in declared, (path, param)


def test_every_route_is_documented_and_nothing_else() -> None:
    doc = openapi_document()["paths"]
    served: set[tuple[str, str]] = set()
    for route in routes():
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    served.add((route.path, method.lower()))
        elif isinstance(route, Mount):
            served.add((route.path + "/{path}", "get"))
    documented = {(path, m) for path, item in doc.items() for m in item if m != "parameters"}
    assert served == documented


async def test_served_document_and_docs_page(api: httpx.AsyncClient) -> None:
    r = await api.get("/openapi.json")
    assert r.status_code == 200
    assert r.json() == openapi_document()
    page = await api.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # The vendored Swagger UI (npm swagger-ui-dist) and its initializer, served from this server.
    for asset in ("/static/vendor/swagger-ui/swagger-ui-bundle.js", "/static/vendor/swagger-ui/swagger-ui.css",
                  "/static/swagger-ui-init.js"):
        assert asset in page.text, asset
        assert (await api.get(asset)).status_code == 200, asset
    init = (await api.get("/static/swagger-ui-init.js")).text
    assert '"/openapi.json"' in init and "validatorUrl: null" in init
    # Self-contained: no CDN (unreachable on air-gapped installs and from the tests).
    for name in ("swagger-ui.html", "swagger-ui-init.js", "index.html", "cards.js", "app.js", "shop.js", "style.css"):
        body = (await api.get(f"/static/{name}")).text
        assert not re.search(r"(src|href)=\"https?://", body), name
    missing = await api.get("/static/nope.js")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_limits_in_the_document_are_the_configured_settings() -> None:
    """The schemas are generated from the models built for the app's Settings, so a limit
    setting changes the published document (LOOKALIKE_MAX_DOCUMENTS_PER_CALL=7 -> maxItems 7)."""
    settings = Settings.from_env({"LOOKALIKE_MAX_DOCUMENTS_PER_CALL": "7", "LOOKALIKE_MAX_BODY_BYTES": "65536"})
    doc = openapi_document(settings)
    schemas = doc["components"]["schemas"]
    for name in ("AddDocumentsRequest", "UpdateDocumentsRequest"):
        assert schemas[name]["properties"]["documents"]["maxItems"] == 7, name
    assert schemas["GetDocumentsRequest"]["properties"]["documentIds"]["maxItems"] == settings.max_get_documents
    add = doc["paths"]["/api/v1/indexes/{index_name}/documents"]["post"]
    assert "65536 bytes" in add["responses"]["413"]["description"]
    assert "65536 bytes" in add["requestBody"]["description"]
    default = openapi_document()["components"]["schemas"]["AddDocumentsRequest"]
    assert default["properties"]["documents"]["maxItems"] == Settings().max_documents_per_call == 128


async def test_served_document_follows_the_app_settings(database_url: str, tmp_path: Path) -> None:
    settings = api_settings(database_url, tmp_path, max_documents_per_call=7)
    async with running_app(settings) as client:
        served = (await client.get("/openapi.json")).json()
        batch = served["components"]["schemas"]["AddDocumentsRequest"]["properties"]["documents"]
        assert batch["maxItems"] == 7
        # ... and the service enforces the same number.
        r = await client.post("/api/v1/indexes/nope/documents", json={"documents": [{}] * 8}, headers=ADMIN)
        assert r.status_code == 404  # the index is looked up first
        name = f"lim-{secrets.token_hex(3)}"
        created = await client.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN)
        assert created.status_code == 200, created.text
        r = await client.post(f"/api/v1/indexes/{name}/documents", json={"documents": [{}] * 8}, headers=ADMIN)
        assert r.status_code == 400 and r.json()["code"] == "too_many_documents" and "at most 7" in r.json()["error"]
        await client.delete(f"/api/v1/indexes/{name}", headers=ADMIN)


async def test_unknown_top_level_keys_are_named(api: httpx.AsyncClient) -> None:
    """SPEC 'Beyond the seed': an unknown key is a 400 unknown_parameter naming it; Marqo's
    userId / sessionId / profileId are accepted and ignored."""
    base = "/api/v1/indexes/oa-unknown"
    await api.delete(base, headers=ADMIN)
    created = await api.post(base, json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}, headers=ADMIN)
    read = {"x-marqo-index-id": created.json()["indexId"]}
    cases = [
        ("POST", "/search", read, {"q": "*", "searchableAttributes": ["x"]}, "searchableAttributes"),
        ("POST", "/reverse-image-search", read, {"q": data_url(product_image(1, 64)), "tensorFields": []},
         "tensorFields"),
        ("POST", "/get-documents", read, {"documentIds": ["a"], "extra": 1}, "extra"),
        ("POST", "/documents", ADMIN, {"documents": [product("a", data_url(product_image(1, 64)))], "x": 1}, "x"),
        ("DELETE", "/documents", ADMIN, {"ids": ["a"], "idz": []}, "idz"),
        ("PATCH", "/settings", ADMIN, {"colour": "blue"}, "colour"),
    ]
    for method, suffix, headers, body, key in cases:
        r = await api.request(method, base + suffix, json=body, headers=headers)
        assert r.status_code == 400, (suffix, r.text)
        assert r.json()["code"] == "unknown_parameter" and repr(key) in r.json()["error"], r.json()
    ignored = {"q": "*", "userId": "u1", "sessionId": "s1", "profileId": "p1"}
    assert (await api.post(base + "/search", json=ignored, headers=read)).status_code == 200
    await api.delete(base, headers=ADMIN)


def test_validator_rejects_what_the_document_does_not_allow(openapi_validator: OpenApiValidator) -> None:
    ok = b'{"error": "Unauthorized", "code": "unauthorized"}'
    openapi_validator.check("GET", "/api/v1/indexes", 401, "application/json", ok)
    with pytest.raises(AssertionError, match="does not match"):
        openapi_validator.check("GET", "/api/v1/indexes", 401, "application/json", b'{"detail": "no"}')
    with pytest.raises(AssertionError, match="does not match"):
        openapi_validator.check(
            "POST", "/api/v1/indexes/x/reverse-image-search", 200, "application/json",
            b'{"hits": [], "limit": 50, "processingTimeMs": 1}',
        )
    with pytest.raises(AssertionError, match="not described"):
        openapi_validator.check("GET", "/secret", 200, "application/json", b"{}")
    with pytest.raises(AssertionError, match="content type"):
        openapi_validator.check("GET", "/health", 200, "text/plain", b"ok")


async def test_every_endpoint_answers_as_documented(api: httpx.AsyncClient) -> None:
    """A walk over all endpoints; the conftest hook validates each response against /openapi.json."""
    assert getattr(api, "_openapi_checked", False), "the OpenAPI response hook is not installed"
    base = "/api/v1/indexes/oa-walk"
    await api.delete(base, headers=ADMIN)
    created = await api.post(base, json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}, headers=ADMIN)
    assert created.status_code == 200, created.text
    read = {"x-marqo-index-id": created.json()["indexId"]}
    assert (await api.post(base, json={"model": TEST_MODEL}, headers=ADMIN)).status_code == 409
    assert (await api.get("/api/v1/indexes", headers=ADMIN)).status_code == 200
    assert (await api.get("/api/v1/indexes")).status_code == 401
    assert (await api.get(base, headers=ADMIN)).status_code == 200
    assert (await api.get(base + "/settings", headers=ADMIN)).status_code == 200
    patched = await api.patch(base + "/settings", json={"reverseImageSearch": {"queryCrops": 2}}, headers=ADMIN)
    assert patched.status_code == 200
    assert (await api.patch(base + "/settings", json={"nope": 1}, headers=ADMIN)).status_code == 400
    docs = [
        product("a", data_url(product_image(1, 64)), brand="Acme", productCollections=["x"]),
        product("b", data_url(product_image(2, 64)), brand="Bolt", price=99),
        product("c", "data:image/png;base64,AAAA"),
    ]
    added = await api.post(base + "/documents", json={"documents": docs}, headers=ADMIN)
    assert added.status_code == 200 and added.json()["errors"] is True
    assert (await api.post(base + "/documents", json={"documents": []}, headers=ADMIN)).status_code == 400
    updated = await api.patch(base + "/documents", json={"documents": [{"_id": "a", "price": 5}]}, headers=ADMIN)
    assert updated.status_code == 200
    got = await api.post(base + "/get-documents", json={"documentIds": ["a", "zz"]}, headers=read)
    assert [r["_found"] for r in got.json()["results"]] == [True, False]
    assert (await api.post(base + "/get-documents", json={"documentIds": ["a"]})).status_code == 401
    assert (await api.get(base + "/stats", headers=ADMIN)).status_code == 200
    assert (await api.post(base + "/calibrate", json={"queries": 2}, headers=ADMIN)).status_code == 200
    streamed = await api.post(base + "/calibrate", json={"queries": 2},
                              headers={**ADMIN, "Accept": "application/x-ndjson"})  # fmt: skip
    assert streamed.status_code == 200 and "report" in streamed.text.splitlines()[-1]
    assert (await api.post(base + "/calibrate", json={"queries": 0}, headers=ADMIN)).status_code == 400
    for body in ({"q": "*", "filter": "brand:Acme"}, {"q": "Product"}, {"q": data_url(product_image(1, 64))}):
        r = await api.post(base + "/search", json=body, headers=read)
        assert r.status_code == 200, r.text
    assert (await api.post(base + "/search", json={"filter": "brand:("}, headers=read)).status_code == 400
    r = await api.post(base + "/reverse-image-search", json={"q": data_url(product_image(2, 64)), "limit": 50},
                       headers=read)
    assert r.status_code == 200 and r.json()["limit"] == 10
    assert (await api.post(base + "/reverse-image-search", json={"q": "shoes"}, headers=read)).status_code == 400
    deleted = await api.request("DELETE", base + "/documents", json={"ids": ["a", "nope"]}, headers=ADMIN)
    assert deleted.status_code == 200
    assert (await api.get("/health")).status_code == 200
    assert (await api.get("/metrics")).status_code == 200
    assert (await api.get("/ui")).status_code == 200
    assert (await api.get("/")).status_code == 307
    assert (await api.get("/no/such/endpoint")).status_code == 404
    assert (await api.put(base)).status_code == 405
    assert (await api.delete(base, headers=ADMIN)).status_code == 200
    assert (await api.get(base, headers=ADMIN)).status_code == 404
