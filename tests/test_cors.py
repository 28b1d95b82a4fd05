"""CORS: read endpoints answer preflights for LOOKALIKE_CORS_ORIGINS, admin endpoints only for
LOOKALIKE_ADMIN_CORS_ORIGINS; and a real browser page on another loopback origin uses them."""

from __future__ import annotations

import json
from typing import Any

import httpx

from app.config import Settings
from tests.browser import needs_chromium
from tests.conftest import ADMIN, LiveServer, api_settings, running_app
from tests.helpers import TEST_MODEL, data_url, product, product_image
from tests.imageserver import ImageServer

SHOP = "https://shop.example"
READ = ["search", "reverse-image-search", "get-documents", "collections", "recommendations/similar"]


def _preflight(method: str = "POST", headers: str = "x-marqo-index-id, content-type", origin: str = SHOP) -> dict:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def test_settings_read_the_origin_lists() -> None:
    default = Settings.from_env({})
    assert default.cors_origins == ("*",) and default.admin_cors_origins == ()
    custom = Settings.from_env(
        {
            "LOOKALIKE_CORS_ORIGINS": "https://a.example, https://b.example/",
            "LOOKALIKE_ADMIN_CORS_ORIGINS": "https://ops",
        }
    )
    assert custom.cors_origins == ("https://a.example", "https://b.example")
    assert custom.admin_cors_origins == ("https://ops",)


async def test_read_endpoints_answer_preflights_admin_ones_do_not(api: httpx.AsyncClient) -> None:
    for suffix in READ:
        path = f"/api/v1/indexes/any-index/{suffix}"
        r = await api.options(path, headers=_preflight())
        assert r.status_code == 200, (path, r.status_code, r.text)
        assert r.headers["access-control-allow-origin"] == "*"
        allowed = r.headers["access-control-allow-headers"].lower()
        assert "x-marqo-index-id" in allowed and "content-type" in allowed
    # A real request carries the header too, even when it is refused (the page can read the 401).
    r = await api.post("/api/v1/indexes/any-index/search", json={}, headers={"Origin": SHOP})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "*"
    for method, path in [
        ("GET", "/api/v1/indexes"),
        ("POST", "/api/v1/indexes/x"),
        ("POST", "/api/v1/indexes/x/documents"),
        ("POST", "/api/v1/indexes/x/calibrate"),
        ("DELETE", "/api/v1/indexes/x"),
    ]:
        r = await api.options(path, headers=_preflight(method, "authorization, content-type"))
        assert "access-control-allow-origin" not in r.headers, (method, path)
        assert r.status_code >= 400
    r = await api.get("/api/v1/indexes", headers={"Origin": SHOP, **ADMIN})
    assert "access-control-allow-origin" not in r.headers


async def test_configured_origins(database_url: str, tmp_path) -> None:
    settings = api_settings(
        database_url, tmp_path, cors_origins=("https://shop.example",), admin_cors_origins=("https://ops.example",)
    )
    async with running_app(settings) as client:
        ok = await client.options("/api/v1/indexes/i/search", headers=_preflight())
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == SHOP
        other = await client.options("/api/v1/indexes/i/search", headers=_preflight(origin="https://evil.example"))
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        admin = await client.options(
            "/api/v1/indexes", headers=_preflight("GET", "authorization", origin="https://ops.example")
        )
        assert admin.status_code == 200 and admin.headers["access-control-allow-origin"] == "https://ops.example"
        shop_on_admin = await client.options("/api/v1/indexes", headers=_preflight("GET", "authorization"))
        assert shop_on_admin.status_code == 400 and "access-control-allow-origin" not in shop_on_admin.headers


# --- a real browser on a second loopback origin ------------------------------------------------

PAGE = """<!doctype html><meta charset="utf-8"><title>shop</title><script>
const base = %(base)s, indexId = %(index_id)s, image = %(image)s, adminKey = %(admin_key)s;
async function call(path, body, headers) {
  try {
    const r = await fetch(base + path, {method: body === undefined ? "GET" : "POST",
      headers: {"content-type": "application/json", ...headers},
      body: body === undefined ? undefined : JSON.stringify(body)});
    return {status: r.status, body: await r.json()};
  } catch (e) { return {error: String(e)}; }
}
(async () => {
  const read = {"x-marqo-index-id": indexId};
  window.results = {
    search: await call("/search", {q: "*", limit: 5}, read),
    reverse: await call("/reverse-image-search", {q: image, limit: 3}, read),
    collections: await call("/collections", {collectionName: "shoes"}, read),
    admin: await call("/stats", undefined, {"authorization": "Bearer " + adminKey}),
  };
})();
</script>"""


@needs_chromium
def test_browser_page_on_another_origin(browser: Any, live_server: LiveServer) -> None:
    name = "cors-shop"
    base = f"{live_server.url}/api/v1/indexes/{name}"
    httpx.delete(base, headers=ADMIN, timeout=30)
    created = httpx.post(
        base, json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}, headers=ADMIN, timeout=60
    )
    assert created.status_code == 200, created.text
    docs = [product(f"c{i}", data_url(product_image(300 + i, 96)), productCollections=["shoes"]) for i in range(4)]
    added = httpx.post(base + "/documents", json={"documents": docs}, headers=ADMIN, timeout=120)
    assert added.json()["errors"] is False, added.text
    page_html = PAGE % {
        "base": json.dumps(base),
        "index_id": json.dumps(created.json()["indexId"]),
        "image": json.dumps(data_url(product_image(301, 96))),
        "admin_key": json.dumps(ADMIN["Authorization"].split()[1]),
    }
    with ImageServer() as shop:
        # `localhost` vs the service's `127.0.0.1`: another origin (scheme, host and port all count)
        url = shop.add("/shop.html", page_html.encode(), "text/html").replace("127.0.0.1", "localhost")
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("() => window.results !== undefined", timeout=60_000)
        results = page.evaluate("() => window.results")
        page.close()
    assert results["search"]["status"] == 200 and len(results["search"]["body"]["hits"]) == 4, results["search"]
    assert results["reverse"]["status"] == 200 and results["reverse"]["body"]["hits"][0]["_id"] == "c1", results
    assert results["collections"]["status"] == 200 and len(results["collections"]["body"]["hits"]) == 4
    # the admin endpoint is not readable from the page: the browser blocks it (no CORS headers)
    assert "error" in results["admin"] and "Failed to fetch" in results["admin"]["error"], results["admin"]
