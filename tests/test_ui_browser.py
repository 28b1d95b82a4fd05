"""The web page in a real headless Chromium (tests/browser.py). The screenshot lands in
bench-results/tmp/ui-screenshot.png."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.http.openapi import openapi_document
from tests.browser import needs_chromium
from tests.conftest import ADMIN, REPO_ROOT, LiveServer
from tests.helpers import TEST_MODEL, product, product_image
from tests.imageserver import ImageServer

SCREENSHOT = REPO_ROOT / "bench-results" / "tmp" / "ui-screenshot.png"
INDEX = "ui-test"

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def shop(live_server: LiveServer, images: ImageServer) -> str:
    """An index of 12 products (brands alternate Acme/Bolt) whose images the image server serves."""
    base = f"{live_server.url}/api/v1/indexes/{INDEX}"
    httpx.delete(base, headers=ADMIN, timeout=30)
    r = httpx.post(base, json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}, headers=ADMIN,
                   timeout=60)
    assert r.status_code == 200, r.text
    docs = [
        product(
            f"ui-{i}",
            images.add(f"/ui/{i}.jpg", product_image(900 + i, 128)),
            productTitle=f"{'Acme' if i % 2 == 0 else 'Bolt'} item {i}",
            brand="Acme" if i % 2 == 0 else "Bolt",
            price=10.0 + i,
        )
        for i in range(12)
    ]
    added = httpx.post(base + "/documents", json={"documents": docs}, headers=ADMIN, timeout=120)
    assert added.json()["errors"] is False, added.text
    return r.json()["indexId"]


def _hit_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all(".hit", "els => els.map(e => e.dataset.id)")


def test_search_page_upload_filter_grid_and_errors(
    browser: Any, live_server: LiveServer, images: ImageServer, shop: str, tmp_path: Path
) -> None:
    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    # CSP violations and script errors surface as console errors: the page must have none.
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "400" not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    page.goto(f"{live_server.url}/ui#index={INDEX}&indexId={shop}")
    assert page.input_value("#index") == INDEX and page.input_value("#index-id") == shop

    # 1. Pick a photo of product 4 (an Acme), filter to Acme, reverse image search.
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(product_image(904, 128))
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    page.fill("#filter", "brand:Acme")
    page.click("#search-btn")
    page.wait_for_selector(".hit")
    ids = _hit_ids(page)
    assert ids[0] == "ui-4" and all(int(i.split("-")[1]) % 2 == 0 for i in ids), ids
    first = page.locator(".hit").first
    assert first.locator(".title").text_content() == "Acme item 4"
    assert first.locator(".price").text_content() == "14.00"
    assert "score" in first.locator(".score").text_content()
    assert "processing time" in page.text_content("#status")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # 2. Drop a photo of product 7 (a Bolt) and use Search by Image, without a filter.
    page.fill("#filter", "")
    page.check('input[name="mode"][value="search"]')
    dropped = base64.b64encode(product_image(907, 128)).decode()
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "drop.jpg", {type: "image/jpeg"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""",
        dropped,
    )
    page.wait_for_function("() => document.getElementById('preview').src.startsWith('data:image/')")
    page.click("#search-btn")
    page.wait_for_function("() => document.querySelector('.hit')?.dataset.id === 'ui-7'")
    assert len(_hit_ids(page)) == 10  # /search honours the page's limit of 10

    # 3. An image URL and a broken filter: the 400 is shown on the page, the old grid is gone.
    page.fill("#image-url", images.url("/ui/3.jpg"))
    page.fill("#filter", "brand:(")
    page.click("#search-btn")
    page.wait_for_selector("#error:not([hidden])")
    error = page.text_content("#error")
    assert error.startswith("400:") and "filter" in error and "invalid_filter" in error, error
    assert _hit_ids(page) == []

    # 4. Words in the text box: /search with text (lexical on this image-only model), photo ignored.
    page.fill("#filter", "")
    page.fill("#text-q", "Bolt item")
    page.click("#search-btn")
    page.wait_for_selector(".hit")
    ids = _hit_ids(page)
    # OR-semantics ranking: every product has "item", the six Bolt items match both words and come first
    assert len(ids) == 10 and all(int(i.split("-")[1]) % 2 == 1 for i in ids[:6]), ids
    assert problems == [], problems
    page.close()


def test_docs_page_renders_every_operation(browser: Any, live_server: LiveServer) -> None:
    """/docs is the vendored Swagger UI: every operation of /openapi.json rendered, no CSP violation,
    nothing fetched from anywhere but this server."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    elsewhere: list[str] = []
    page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith((live_server.url, "data:")) else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{live_server.url}/docs")
    page.wait_for_selector(".opblock")
    operations = sum(
        1 for item in openapi_document()["paths"].values() for method in item if method != "parameters"
    )
    page.wait_for_function(f"() => document.querySelectorAll('.opblock').length === {operations}")
    assert page.locator(".opblock").count() == operations
    schemas = openapi_document()["components"]["schemas"]
    assert page.locator("section.models .json-schema-2020-12__title").count() == len(schemas)  # every schema listed too
    assert "HealthUnavailable" in page.locator("section.models").inner_text()
    # "Try it out" works under the page's CSP (connect-src 'self'): GET /health from the page.
    health = "#operations-operations-get_health"
    page.click(f"{health} .opblock-summary")
    page.click(f"{health} .try-out__btn")
    page.click(f"{health} .execute")
    status = page.wait_for_selector(f"{health} .live-responses-table tbody .response-col_status")
    assert status is not None and status.text_content().strip().startswith("200")
    assert elsewhere == [], elsewhere
    assert problems == [], problems
    page.close()


MATCH_SCREENSHOT = REPO_ROOT / "bench-results" / "ui-match-screenshot.png"


def test_page_draws_where_the_hit_is_and_why(
    browser: Any, live_server: LiveServer, shop: str, tmp_path: Path
) -> None:
    """A photo with product 5 pasted into clutter: the page draws the top hit's `_match` box on the
    photo, where the product is, and on request the matched keypoint pairs side by side."""
    import io
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(3)
    scene = Image.new("RGB", (480, 360), (128, 120, 110))
    draw = ImageDraw.Draw(scene)
    for _ in range(40):  # clutter
        x, y = rng.randrange(480), rng.randrange(360)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x, y, x + rng.randrange(5, 40), y + rng.randrange(5, 40)), fill=colour)
    pasted = (200, 120, 360, 280)
    product_photo = Image.open(io.BytesIO(product_image(905, 128))).resize((160, 160))
    scene.paste(product_photo, pasted[:2])
    photo = tmp_path / "scene.png"
    scene.save(photo)

    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1100, "height": 1100})
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{live_server.url}/ui#index={INDEX}&indexId={shop}")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    page.click("#search-btn")
    page.wait_for_selector("#match-view:not([hidden])")
    assert _hit_ids(page)[0] == "ui-5"
    box = page.eval_on_selector("#match-canvas", "c => c.dataset.box ? JSON.parse(c.dataset.box) : null")
    assert box is not None, page.text_content("#match-caption")
    ix = max(0, min(box[2], pasted[2]) - max(box[0], pasted[0]))
    iy = max(0, min(box[3], pasted[3]) - max(box[1], pasted[1]))
    inter = ix * iy
    iou = inter / ((box[2] - box[0]) * (box[3] - box[1]) + 160 * 160 - inter)
    assert iou >= 0.5, (box, pasted)
    # the box is drawn: the canvas pixel on its left edge has the box colour (#d6246e)
    rgb = page.eval_on_selector(
        "#match-canvas",
        """(c, box) => { const s = parseFloat(c.dataset.scale);
            return Array.from(c.getContext('2d').getImageData(Math.round(box[0] * s),
                Math.round((box[1] + box[3]) / 2 * s), 1, 1).data).slice(0, 3); }""",
        box,
    )
    assert rgb[0] > 170 and rgb[1] < 90 and rgb[2] > 70, rgb
    assert "matched keypoints" in page.text_content("#match-caption")
    assert page.locator(".hit.selected").count() == 1

    page.click("#explain-btn")
    page.wait_for_selector("#explain-canvas:not([hidden])")
    pairs = int(page.eval_on_selector("#explain-canvas", "c => c.dataset.pairs"))
    assert pairs >= 6, pairs
    MATCH_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(MATCH_SCREENSHOT), full_page=True)
    assert problems == [], problems
    page.close()
