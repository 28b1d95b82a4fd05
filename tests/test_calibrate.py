"""Self-calibration: the sweep scores exactly as the service ranks; `POST /calibrate` answers the
report (JSON, or NDJSON progress then the report), refuses what it cannot do with 4xx, runs one
calibration per index at a time and stops when its client goes away; `lookalike calibrate` runs
it through the service (--url) or on the database directly (--database-url)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import subprocess
import sys
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from app.domain import calibrate as cal
from app.domain import rerank
from app.samples import wild
from tests.conftest import ADMIN, ADMIN_KEY, REPO_ROOT
from tests.helpers import TEST_MODEL, product


class _V:
    def __init__(self, inliers: int, agree: float, ok: bool, matches: int = 0, box_fraction: float = 0.0):
        self.inliers, self.colour_agreement, self.homography_ok = inliers, agree, ok
        self.matches, self.box_fraction = matches, box_fraction


@pytest.mark.parametrize("seed", range(20))
def test_sweep_ranks_exactly_as_the_service(seed: int) -> None:
    """rank_of_truth (vectorised, for the sweep) agrees with rerank's own selection and ranking."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    cands = {}
    verifications = {}
    for k in range(n):
        agg = None if rng.random() < 0.2 else float(rng.uniform(-0.1, 0.4))
        col = None if rng.random() < 0.2 else float(rng.uniform(0.0, 1.0))
        cands[k] = rerank.Candidate(k, float(rng.uniform(-0.2, 0.9)), None, agg, col)
        if rng.random() < 0.6:
            inliers = int(rng.integers(0, 40))
            agree, ok = float(rng.uniform(0, 1)), bool(rng.random() < 0.8)
            box_fraction = float(rng.uniform(0.0, 0.6)) if ok else 0.0
            verifications[k] = _V(inliers, agree, ok, inliers + int(rng.integers(0, 12)), box_fraction)
    truth = int(rng.integers(n))
    p = rerank.RerankParams(
        aggregate_weight=float(rng.choice([0.0, 1.0, 4.0])),
        verify_weight=float(rng.choice([1.0, 4.0])),
        verify_top=int(rng.choice([0, 5, 20])),
        min_inliers=int(rng.choice([2, 6])),
        inlier_saturation=float(rng.choice([4.0, 8.0])),
        match_weight=float(rng.choice([0.0, 2.0])),
        match_saturation=float(rng.choice([8.0, 16.0])),
        colour_weight=float(rng.choice([0.0, 1.0, 3.0])),
        prominence_area=float(rng.choice([0.0, 0.1, 0.3])),
    )
    signals = cal.signals_of(cands, verifications, truth)
    verified = set(rerank.select_for_verification(cands.values(), p))
    ranked = rerank.combine_scores(
        [replace(c, verification=verifications.get(k)) for k, c in cands.items() if k in verified], p  # type: ignore[arg-type]
    )
    keys = [k for k, _ in ranked]
    expected = keys.index(truth) if truth in keys else None
    assert cal.rank_of_truth(signals, p) == expected


def _jpeg(image) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


async def _calibration_index(api: httpx.AsyncClient, images, products: int = 20, **settings: Any) -> tuple[str, list]:  # type: ignore[no-untyped-def]
    name = f"cal-{secrets.token_hex(3)}"
    body = {"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}, **settings}
    r = await api.post(f"/api/v1/indexes/{name}", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text
    docs = [
        product(c.id, images.add(f"/{name}/{c.id}.jpg", _jpeg(c.image)))
        for c in wild.generate_catalog(products, seed=8)
    ]
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert r.json()["errors"] is False, r.text
    return name, docs


def _check_report(report: dict[str, Any], queries: int) -> None:
    assert report["queries"] == queries and report["tunedOn"] == queries // 2 and report["heldOut"] == queries // 2
    for side in ("before", "after"):
        for key in ("recallAt1", "recallAt10", "mrrAt10"):
            assert 0.0 <= report[side][key] <= 1.0
        assert set(report[side]["heldOut"]) == {"recallAt1", "recallAt10", "mrrAt10"}
    # the sweep never does worse than the current knobs on the photos it tuned on
    tuned_before, tuned_after = report["before"]["tuned"], report["after"]["tuned"]
    assert (tuned_after["recallAt1"], tuned_after["mrrAt10"]) >= (tuned_before["recallAt1"], tuned_before["mrrAt10"])
    assert report["before"]["knobs"]["aggregateWeight"] == rerank.DEFAULT_PARAMS.aggregate_weight
    assert set(report["knobs"]) == set(cal.SCORING_KNOBS)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    environment.update(LOOKALIKE_LOG_FORMAT="text", **env)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "calibrate", *args],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


async def test_calibrate_command_reports_and_applies(api: httpx.AsyncClient, images, live_server) -> None:  # type: ignore[no-untyped-def]
    """`lookalike calibrate --url` asks the running service, streams its progress, prints the report."""
    name, docs = await _calibration_index(api, images)
    done = await asyncio.to_thread(
        _cli, name, "--url", live_server.url, "--queries", "8", "--json", "--apply", LOOKALIKE_API_KEY=ADMIN_KEY
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "searched 8/8 calibration photos" in done.stderr  # progress, streamed from the service
    _check_report(report, 8)
    assert report["applied"] is True and report["skipped"] == 0
    # the int8 guard was checked again on the calibration sample; its verdict is stored and shown
    guard = report["int8Guard"]
    assert guard.get("sample") == 8 and guard["status"] in ("passed", "failed"), guard
    assert guard["precision"] == ("int8" if guard["status"] == "passed" else "fp32")
    inference = (await api.get(f"/api/v1/indexes/{name}/settings", headers=ADMIN)).json()["inference"]
    assert inference["guard"]["checkedOn"] == "calibration" and inference["guard"]["sample"] == 8
    assert inference["precision"] == guard["precision"]

    # --apply stored them; reverse search reads them (a validated, visible setting)
    described = (await api.get(f"/api/v1/indexes/{name}", headers=ADMIN)).json()
    settings = described["settings"]["reverseImageSearch"]
    assert {k: settings[k] for k in report["knobs"]} == report["knobs"]
    r = await api.post(
        f"/api/v1/indexes/{name}/reverse-image-search",
        json={"q": docs[0]["variantImageUrl"]},
        headers={"x-marqo-index-id": described["indexId"]},
    )
    assert r.status_code == 200 and r.json()["hits"][0]["_id"] == docs[0]["_id"]

    # refusals: exit 2 for what cannot be calibrated, 1 for a wrong key, with the service's message
    done = await asyncio.to_thread(_cli, "no-such-index", "--url", live_server.url, "--api-key", ADMIN_KEY)
    assert done.returncode == 2 and "index_not_found" in done.stderr, done.stderr
    done = await asyncio.to_thread(_cli, name, "--url", live_server.url, "--api-key", "wrong")
    assert done.returncode == 1 and "unauthorized" in done.stderr, done.stderr


async def test_calibrate_on_the_database_directly(api: httpx.AsyncClient, images, database_url: str) -> None:  # type: ignore[no-untyped-def]
    """The operator's fallback: --database-url runs the same calibration in the CLI process."""
    name, _ = await _calibration_index(api, images, products=6)
    allow = {"LOOKALIKE_IMAGE_FETCH_ALLOWLIST": "127.0.0.1,localhost"}
    done = await asyncio.to_thread(_cli, name, "--database-url", database_url, "--queries", "4", "--json", **allow)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    _check_report(report, 4)
    assert report["applied"] is False
    done = await asyncio.to_thread(_cli, "no-such-index", "--database-url", database_url, **allow)
    assert done.returncode == 2 and "no index named" in done.stderr
    done = await asyncio.to_thread(_cli, name, "--database-url", database_url, "--queries", "1", **allow)
    assert done.returncode == 1 and "queries must be between 2 and 1000" in done.stderr


async def test_scoring_knobs_are_validated_and_used(api: httpx.AsyncClient) -> None:
    name = f"knobs-{secrets.token_hex(3)}"
    r = await api.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN)
    assert r.status_code == 200
    path = f"/api/v1/indexes/{name}/settings"
    for bad in ({"verifyTop": 2.5}, {"aggregateWeight": -1}, {"verifyWeight": "2"}, {"inlierSaturation": 0},
                {"matchWeight": -0.5}, {"matchSaturation": 0}, {"regionMinInliers": 2.5},
                {"colourWeight": -1}, {"colourWeight": 33}, {"colourWeight": True}, {"colourPool": 2.5},
                {"colourPool": -1}, {"colourPool": 201}, {"prominenceArea": -0.1}, {"prominenceArea": 1.5},
                {"prominenceArea": "0.1"}):
        r = await api.patch(path, json={"reverseImageSearch": bad}, headers=ADMIN)
        assert r.status_code == 400 and r.json()["code"] == "invalid_settings", (bad, r.text)
    knobs = {"aggregateWeight": 2.5, "verifyWeight": 3, "verifyTop": 30, "minInliers": 5, "inlierSaturation": 6,
             "matchWeight": 1.5, "matchSaturation": 12, "regionMinInliers": 3, "colourWeight": 0.75,
             "colourPool": 15, "prominenceArea": 0.12}
    r = await api.patch(path, json={"reverseImageSearch": knobs}, headers=ADMIN)
    assert r.status_code == 200, r.text
    from app.domain.reverse import params_for

    stored = (await api.get(f"/api/v1/indexes/{name}", headers=ADMIN)).json()["settings"]["reverseImageSearch"]
    p = params_for(stored, rerank.DEFAULT_PARAMS)
    used = (p.aggregate_weight, p.verify_weight, p.verify_top, p.min_inliers, p.inlier_saturation,
            p.match_weight, p.match_saturation, p.region_min_inliers, p.colour_weight, p.colour_pool,
            p.prominence_area)
    assert used == (2.5, 3.0, 30, 5, 6.0, 1.5, 12.0, 3, 0.75, 15, 0.12)


async def test_calibrate_endpoint_json_and_stream(api: httpx.AsyncClient, images) -> None:  # type: ignore[no-untyped-def]
    """The report as JSON, or NDJSON progress lines then the report (both validated against
    /openapi.json by the conftest hook); apply false leaves the settings alone."""
    name, _ = await _calibration_index(api, images, products=8)
    path = f"/api/v1/indexes/{name}/calibrate"
    before = (await api.get(f"/api/v1/indexes/{name}/settings", headers=ADMIN)).json()
    r = await api.post(path, json={"queries": 4, "seed": 3}, headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
    _check_report(r.json(), 4)
    assert r.json()["applied"] is False and r.json()["index"] == name
    assert (await api.get(f"/api/v1/indexes/{name}/settings", headers=ADMIN)).json() == before

    r = await api.post(path, json={"queries": 4, "seed": 3}, headers={**ADMIN, "Accept": "application/x-ndjson"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text
    assert r.headers["x-accel-buffering"] == "no"
    lines = [json.loads(line) for line in r.text.splitlines()]
    stages = [line["progress"]["stage"] for line in lines[:-1]]
    assert stages[0] == "start" and stages.count("search") == 4 and stages[-1] == "sweep", stages
    searched = [line["progress"]["done"] for line in lines[:-1] if line["progress"]["stage"] == "search"]
    assert searched == [1, 2, 3, 4]
    _check_report(lines[-1]["report"], 4)


async def test_calibrate_refusals(api: httpx.AsyncClient, images) -> None:  # type: ignore[no-untyped-def]
    name, _ = await _calibration_index(api, images, products=3)
    path = f"/api/v1/indexes/{name}/calibrate"
    for body, code in [
        ({"queries": 1}, "invalid_queries"),
        ({"queries": 1001}, "invalid_queries"),
        ({"queries": "5"}, "invalid_queries"),
        ({"queries": 2.5}, "invalid_queries"),
        ({"seed": -1}, "invalid_seed"),
        ({"seed": True}, "invalid_seed"),
        ({"apply": "yes"}, "invalid_apply"),
        ({"querys": 5}, "unknown_parameter"),
        ([1], "invalid_request"),
    ]:
        r = await api.post(path, json=body, headers=ADMIN)
        assert r.status_code == 400 and r.json()["code"] == code, (body, r.text)
    r = await api.post(path, content=b"{nope", headers=ADMIN)
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    r = await api.post("/api/v1/indexes/no-such-index/calibrate", headers=ADMIN)
    assert r.status_code == 404 and r.json()["code"] == "index_not_found"

    off = f"cal-off-{secrets.token_hex(3)}"
    assert (await api.post(f"/api/v1/indexes/{off}", json={"model": TEST_MODEL}, headers=ADMIN)).status_code == 200
    r = await api.post(f"/api/v1/indexes/{off}/calibrate", headers={**ADMIN, "Accept": "application/x-ndjson"})
    assert r.status_code == 409 and r.json()["code"] == "reverse_search_disabled"  # a status, in stream mode too
    empty = f"cal-empty-{secrets.token_hex(3)}"
    body = {"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}
    assert (await api.post(f"/api/v1/indexes/{empty}", json=body, headers=ADMIN)).status_code == 200
    r = await api.post(f"/api/v1/indexes/{empty}/calibrate", headers=ADMIN)
    assert r.status_code == 409 and r.json()["code"] == "not_enough_products"

    # two at once on one index: one runs, the other is refused (the lock is PostgreSQL's, per index,
    # so two `lookalike serve` processes refuse each other the same way)
    first, second = await asyncio.gather(
        api.post(path, json={"queries": 3}, headers=ADMIN), api.post(path, json={"queries": 3}, headers=ADMIN)
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
    refused = first if first.status_code == 409 else second
    assert refused.json()["code"] == "calibration_running"
    # ... and the lock is given back when the run ends
    assert (await api.post(path, json={"queries": 2}, headers=ADMIN)).status_code == 200


def test_a_client_that_goes_away_ends_the_run(live_server, images, caplog) -> None:  # type: ignore[no-untyped-def]
    """Closing the stream cancels the calibration mid-run and releases its lock."""
    import logging
    import time

    base = f"{live_server.url}/api/v1/indexes"
    name = f"cal-gone-{secrets.token_hex(3)}"
    body = {"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}
    assert httpx.post(f"{base}/{name}", json=body, headers=ADMIN, timeout=60).status_code == 200
    docs = [product(c.id, images.add(f"/{name}/{c.id}.jpg", _jpeg(c.image))) for c in wild.generate_catalog(12, seed=4)]
    r = httpx.post(f"{base}/{name}/documents", json={"documents": docs}, headers=ADMIN, timeout=120)
    assert r.json()["errors"] is False, r.text
    stream_headers = {**ADMIN, "Accept": "application/x-ndjson"}
    with caplog.at_level(logging.INFO, logger="lookalike.calibrate"):
        with httpx.stream("POST", f"{base}/{name}/calibrate", json={"queries": 12}, headers=stream_headers,
                          timeout=60) as response:  # fmt: skip
            assert response.status_code == 200
            for line in response.iter_lines():
                if json.loads(line)["progress"]["stage"] == "search":
                    break  # one photo of twelve searched: hang up
        stopped = f"calibration of {name!r} stopped before its end"
        deadline = time.monotonic() + 60
        while not any(stopped in record.getMessage() for record in caplog.records):
            assert time.monotonic() < deadline, "the run did not stop when its client went away"
            time.sleep(0.1)
    r = httpx.post(f"{base}/{name}/calibrate", json={"queries": 2}, headers=ADMIN, timeout=120)
    assert r.status_code == 200, r.text  # the lock was given back


async def test_calibrate_waits_for_pending_embeddings(database_url: str, tmp_path, images) -> None:  # type: ignore[no-untyped-def]
    """Queue mode: products waiting for a worker would be missing from the measurement: 409."""
    from tests.conftest import api_settings, running_app

    async with running_app(api_settings(database_url, tmp_path, ingest_mode="queue")) as client:
        name = f"cal-queued-{secrets.token_hex(3)}"
        body = {"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}
        assert (await client.post(f"/api/v1/indexes/{name}", json=body, headers=ADMIN)).status_code == 200
        catalog = wild.generate_catalog(3, seed=5)
        docs = [product(c.id, images.add(f"/{name}/{c.id}.jpg", _jpeg(c.image))) for c in catalog]
        r = await client.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
        assert {item["status"] for item in r.json()["items"]} == {202}, r.text
        try:
            r = await client.post(f"/api/v1/indexes/{name}/calibrate", headers=ADMIN)
            assert r.status_code == 409 and r.json()["code"] == "index_not_ready", r.text
            assert "3 embeddings" in r.json()["error"]
        finally:  # no worker of another test should find these products
            await client.delete(f"/api/v1/indexes/{name}", headers=ADMIN)


async def test_images_that_no_longer_load(api: httpx.AsyncClient, images) -> None:  # type: ignore[no-untyped-def]
    """A product whose image is gone is skipped and counted; with fewer than two left the run fails:
    a 409 in JSON, the last line (SPEC error shape) of a stream that had begun."""
    name, docs = await _calibration_index(api, images, products=3)
    path = f"/api/v1/indexes/{name}/calibrate"
    gone = [urlsplit(d["variantImageUrl"]).path for d in docs]
    images.routes.pop(gone[0])
    r = await api.post(path, json={"queries": 3}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["skipped"] == 1 and r.json()["queries"] == 2
    images.routes.pop(gone[1])
    r = await api.post(path, json={"queries": 3}, headers=ADMIN)
    assert r.status_code == 409 and r.json()["code"] == "not_enough_products", r.text
    r = await api.post(path, json={"queries": 3}, headers={**ADMIN, "Accept": "application/x-ndjson"})
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[0]["progress"]["stage"] == "start"
    assert lines[-1]["code"] == "not_enough_products" and set(lines[-1]) == {"error", "code"}
    # the lock was released with the failed run
    assert (await api.post(path, json={"queries": 3}, headers=ADMIN)).json()["code"] == "not_enough_products"
