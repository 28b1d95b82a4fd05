"""The web page's catalog side in a real headless Chromium: text search, the facet sidebar with
multi-select (excludeTerms), sort and collapse, all through the public read API.
The screenshot lands in bench-results/ui-storefront.png."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.browser import needs_chromium
from tests.conftest import ADMIN, REPO_ROOT, LiveServer
from tests.helpers import TEST_MODEL, data_url, product, product_image

SCREENSHOT = REPO_ROOT / "bench-results" / "ui-storefront.png"
INDEX = "ui-shop"

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def catalog(live_server: LiveServer) -> str:
    base = f"{live_server.url}/api/v1/indexes/{INDEX}"
    httpx.delete(base, headers=ADMIN, timeout=30)
    r = httpx.post(base, json={"model": TEST_MODEL}, headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    kinds = ["Wireless Headphones", "Hiking Boots", "Leather Wallet"]
    docs = [
        product(
            f"v{i:02d}",
            data_url(product_image(500 + i, 64)),
            productTitle=f"{kinds[i % 3]} {['Acme', 'Bolt'][i % 2]}",
            variantTitle=["red", "blue"][i // 6],
            brand=["Acme", "Bolt"][i % 2],
            price=float(10 + 9 * i),
            parentProductId=f"p{i % 6}",
            productCollections=["audio"] if i % 3 == 0 else ["outdoor", "sale"] if i % 3 == 1 else ["gifts"],
        )
        for i in range(12)
    ]
    added = httpx.post(base + "/documents", json={"documents": docs}, headers=ADMIN, timeout=120)
    assert added.json()["errors"] is False, added.text
    return r.json()["indexId"]


def _ids(page: Any) -> list[str]:
    return page.eval_on_selector_all("#shop-results .hit", "els => els.map(e => e.dataset.id)")


def _counts(page: Any, field: str) -> dict[str, int]:
    return page.evaluate(
        """(field) => Object.fromEntries([...document.querySelectorAll(`.facet[data-field="${field}"] label`)]
            .map(l => [l.querySelector("input").value, parseInt(l.querySelector(".count").textContent, 10)]))""",
        field,
    )


def _wait_for(page: Any, previous: str) -> None:
    """Until the page has answered one more search than `previous` (its data-answered count)."""
    page.wait_for_function(
        "(previous) => (document.getElementById('shop-status').dataset.answered || '0') !== previous",
        arg=previous,
    )


def _status(page: Any) -> str:
    return page.evaluate("() => document.getElementById('shop-status').dataset.answered || '0'")


def test_text_search_facets_sort_and_collapse(browser: Any, live_server: LiveServer, catalog: str) -> None:  # noqa: F811
    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 1100})
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{live_server.url}/ui#index={INDEX}&indexId={catalog}")

    # 1. A misspelt text query finds the headphones first.
    page.fill("#shop-q", "wireles headphnes")
    page.click("#shop-btn")
    _wait_for(page, "0")
    ids = _ids(page)
    assert ids[:4] and all(int(i[1:]) % 3 == 0 for i in ids[:4]), ids
    assert _counts(page, "brand") == {"Acme": 2, "Bolt": 2} or sum(_counts(page, "brand").values()) >= 4

    # 2. Browse everything, pick Acme: the brand facet still offers Bolt (excludeTerms).
    page.fill("#shop-q", "")
    before = _status(page)
    page.click("#shop-btn")
    _wait_for(page, before)
    assert _counts(page, "brand") == {"Acme": 6, "Bolt": 6}
    before = _status(page)
    page.check('.facet[data-field="brand"] input[value="Acme"]')
    _wait_for(page, before)
    assert sorted(_ids(page)) == [f"v{i:02d}" for i in range(0, 12, 2)]
    assert _counts(page, "brand") == {"Acme": 6, "Bolt": 6}
    assert _counts(page, "productCollections") == {"audio": 2, "outdoor": 2, "sale": 2, "gifts": 2}
    before = _status(page)
    page.check('.facet[data-field="brand"] input[value="Bolt"]')
    _wait_for(page, before)
    assert len(_ids(page)) == 12

    # 3. A price bucket, sorted by price high to low.
    before = _status(page)
    page.check('.facet[data-field="price"] input[value="50 to 100"]')
    _wait_for(page, before)
    before = _status(page)
    page.select_option("#sort", "price:desc")
    _wait_for(page, before)
    prices = [10 + 9 * int(i[1:]) for i in _ids(page)]
    assert prices == sorted(prices, reverse=True) and all(50 <= p < 100 for p in prices), prices
    assert _counts(page, "price")["50 to 100"] == len(prices)

    # 4. Collapse variants: one hit per parent product.
    before = _status(page)
    page.uncheck('.facet[data-field="price"] input[value="50 to 100"]')
    _wait_for(page, before)
    before = _status(page)
    page.check("#collapse")
    _wait_for(page, before)
    ids = _ids(page)
    assert len(ids) == 6 and len({int(i[1:]) % 6 for i in ids}) == 6, ids
    page.wait_for_function(
        "() => [...document.querySelectorAll('#shop-results .hit img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert problems == [], problems
    page.close()
