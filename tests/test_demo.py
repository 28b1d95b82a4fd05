"""`lookalike demo`: serve a sample shop, and the curl it prints finds products."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import demo
from app.cli import build_parser
from app.config import FetchAllowList
from tests.conftest import ADMIN, api_settings
from tests.helpers import TEST_MODEL


def test_cli_parses_demo_options() -> None:
    args = build_parser().parse_args(["demo", "--products", "40", "--port", "0", "--offline", "--reset"])
    assert (args.products, args.port, args.offline, args.reset, args.index) == (40, 0, True, True, "demo")


def test_sample_catalog_has_brands_prices_collections() -> None:
    items = demo.sample_catalog(8, seed=3)
    assert len({p.doc["_id"] for p in items}) == 8
    for item in items:
        assert item.doc["brand"] and isinstance(item.doc["price"], float)
        assert item.doc["productCollections"] and item.cutout.mode == "RGBA"
    photo = demo.shopper_photo(items[0], seed=3)
    assert photo.size == (640, 480)


def test_demo_serves_and_its_printed_curl_returns_hits(database_url: str, tmp_path: Path) -> None:
    # The demo's own settings: no fetch allow-list (its images are data URLs), its own data dir.
    settings = replace(api_settings(database_url, tmp_path), api_key=None, fetch_allowlist=FetchAllowList())
    options = demo.DemoOptions(products=40, index="demo-test", port=0, offline=True, reset=True)
    out = io.StringIO()
    ready = threading.Event()
    state: dict[str, Any] = {}

    def on_ready(info: demo.DemoInfo, server: Any) -> None:
        state["info"], state["server"] = info, server
        ready.set()

    def run() -> None:
        try:
            state["rc"] = asyncio.run(demo.run(options, settings=settings, out=out, on_ready=on_ready))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(timeout=180), out.getvalue()
        assert "error" not in state, state.get("error")
        info: demo.DemoInfo = state["info"]
        printed = out.getvalue()
        assert info.page_url in printed and info.index_id in printed and "admin key" in printed
        assert "random weights" in printed  # offline model, labelled as such

        # The curl exactly as printed (a shell with curl and base64, as on the user's machine).
        curl = printed[printed.index("curl -s") :].strip()
        assert curl == info.curl
        if shutil.which("curl") and shutil.which("base64"):
            done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
        else:  # the same request without a shell
            q = "data:image/jpeg;base64," + __import__("base64").b64encode(info.photo.read_bytes()).decode()
            answer = httpx.post(
                f"{info.base_url}/api/v1/indexes/{info.index_name}/reverse-image-search",
                json={"q": q, "limit": 5, "attributesToRetrieve": ["productTitle", "brand", "price"]},
                headers={"x-marqo-index-id": info.index_id},
                timeout=60,
            ).json()
        hits = answer["hits"]
        assert 1 <= len(hits) <= 5, answer
        assert set(hits[0]) - {"_match"} == {"_id", "_score", "productTitle", "brand", "price"}
        assert "_match" in hits[0]  # the demo photo's product verifies: the hit says where it is
        assert all(re.fullmatch(r"p\d{5}", h["_id"]) for h in hits)
        # The photographed product is found (re-ranking makes this hold even with random weights).
        assert info.photo_product_id in [h["_id"] for h in hits], (info.photo_product_id, hits)

        # The web page the demo points at is served, prefilled through the URL fragment.
        page = httpx.get(info.page_url, timeout=10)
        assert page.status_code == 200 and "search-form" in page.text
        assert "#index=demo-test&indexId=" in info.page_url
        stats = httpx.get(
            f"{info.base_url}/api/v1/indexes/demo-test/stats",
            headers={"x-marqo-index-id": info.index_id},
            timeout=10,
        )
        assert stats.status_code == 401  # the index id reads; it opens no admin endpoint
    finally:
        if "server" in state:
            state["server"].should_exit = True
        thread.join(timeout=60)
    assert state.get("rc") == 0, state


async def test_demo_never_overwrites_an_index_without_reverse_search(api: httpx.AsyncClient, tmp_path: Path) -> None:
    """Re-running reuses the demo index; an unrelated index of the same name needs --reset."""
    base = "/api/v1/indexes/demo-taken"
    await api.delete(base, headers=ADMIN)
    assert (await api.post(base, json={"model": TEST_MODEL}, headers=ADMIN)).status_code == 200
    services = api.app.state.services  # type: ignore[attr-defined]
    with pytest.raises(SystemExit, match="--reset"):
        await demo.prepare(services, demo.DemoOptions(index="demo-taken", products=2), tmp_path, print)
    assert (await api.get(base, headers=ADMIN)).status_code == 200
    await api.delete(base, headers=ADMIN)


async def test_model_option_takes_an_open_clip_setting(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from app.config import Settings
    from app.vision.openclip import OFFLINE_OPEN_CLIP_MODEL
    from app.vision.service import VisionService

    raw = json.dumps(OFFLINE_OPEN_CLIP_MODEL)
    args = build_parser().parse_args(["demo", "--model", raw])
    assert args.model == raw
    vision = VisionService(Settings(data_dir=tmp_path))
    try:
        svc = SimpleNamespace(vision=vision)
        model, note = await demo._choose_model(svc, offline=False, model=raw)
        assert model == OFFLINE_OPEN_CLIP_MODEL
        assert "random weights" in note and "text search" in note
        for bad in ('{"library": "open_clip", "name": "ViT-B-99"}', "[1]", "{oops"):
            with pytest.raises(SystemExit, match="--model"):
                await demo._choose_model(svc, offline=False, model=bad)
    finally:
        await vision.aclose()
