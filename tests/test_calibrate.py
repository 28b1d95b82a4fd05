"""`lookalike calibrate`: the sweep scores exactly as the service ranks, and the command runs
end to end on a small index (wild photos of its own products, --json, --apply)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import subprocess
import sys
from dataclasses import replace

import httpx
import numpy as np
import pytest

from app.domain import calibrate as cal
from app.domain import rerank
from app.samples import wild
from tests.conftest import ADMIN, REPO_ROOT
from tests.helpers import TEST_MODEL, product


class _V:
    def __init__(self, inliers: int, agree: float, ok: bool, matches: int = 0):
        self.inliers, self.colour_agreement, self.homography_ok = inliers, agree, ok
        self.matches = matches


@pytest.mark.parametrize("seed", range(20))
def test_sweep_ranks_exactly_as_the_service(seed: int) -> None:
    """rank_of_truth (vectorised, for the sweep) agrees with rerank's own selection and ranking."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    cands = {}
    verifications = {}
    for k in range(n):
        agg = None if rng.random() < 0.2 else float(rng.uniform(-0.1, 0.4))
        cands[k] = rerank.Candidate(k, float(rng.uniform(-0.2, 0.9)), None, agg)
        if rng.random() < 0.6:
            inliers = int(rng.integers(0, 40))
            agree, ok = float(rng.uniform(0, 1)), bool(rng.random() < 0.8)
            verifications[k] = _V(inliers, agree, ok, inliers + int(rng.integers(0, 12)))
    truth = int(rng.integers(n))
    p = rerank.RerankParams(
        aggregate_weight=float(rng.choice([0.0, 1.0, 4.0])),
        verify_weight=float(rng.choice([1.0, 4.0])),
        verify_top=int(rng.choice([0, 5, 20])),
        min_inliers=int(rng.choice([2, 6])),
        inlier_saturation=float(rng.choice([4.0, 8.0])),
        match_weight=float(rng.choice([0.0, 2.0])),
        match_saturation=float(rng.choice([8.0, 16.0])),
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


async def test_calibrate_command_reports_and_applies(api: httpx.AsyncClient, images, database_url: str) -> None:  # type: ignore[no-untyped-def]
    name = f"cal-{secrets.token_hex(3)}"
    r = await api.post(
        f"/api/v1/indexes/{name}", json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    docs = [
        product(c.id, images.add(f"/{name}/{c.id}.jpg", _jpeg(c.image)))
        for c in wild.generate_catalog(20, seed=8)
    ]
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert r.json()["errors"] is False, r.text

    env = {**os.environ, "LOOKALIKE_IMAGE_FETCH_ALLOWLIST": "127.0.0.1,localhost", "LOOKALIKE_LOG_FORMAT": "text"}
    command = [sys.executable, "-m", "app.cli", "calibrate", name, "--url", database_url, "--queries", "8"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*command, "--json", "--apply"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "searched 8/8 calibration photos" in done.stderr  # progress
    assert report["queries"] == 8 and report["tunedOn"] == 4 and report["heldOut"] == 4
    for side in ("before", "after"):
        for key in ("recallAt1", "recallAt10", "mrrAt10"):
            assert 0.0 <= report[side][key] <= 1.0
        assert set(report[side]["heldOut"]) == {"recallAt1", "recallAt10", "mrrAt10"}
    # the sweep never does worse than the current knobs on the photos it tuned on
    tuned_before, tuned_after = report["before"]["tuned"], report["after"]["tuned"]
    assert (tuned_after["recallAt1"], tuned_after["mrrAt10"]) >= (tuned_before["recallAt1"], tuned_before["mrrAt10"])
    assert report["before"]["knobs"]["aggregateWeight"] == rerank.DEFAULT_PARAMS.aggregate_weight
    assert set(report["knobs"]) == set(cal.SCORING_KNOBS) and report["applied"] is True

    # --apply stored them; reverse search reads them (a validated, visible setting)
    settings = (await api.get(f"/api/v1/indexes/{name}", headers=ADMIN)).json()["settings"]["reverseImageSearch"]
    assert {k: settings[k] for k in report["knobs"]} == report["knobs"]
    index_id = r.request.headers.get("x-marqo-index-id") or (
        await api.get(f"/api/v1/indexes/{name}", headers=ADMIN)
    ).json()["indexId"]
    r = await api.post(
        f"/api/v1/indexes/{name}/reverse-image-search",
        json={"q": docs[0]["variantImageUrl"]},
        headers={"x-marqo-index-id": index_id},
    )
    assert r.status_code == 200 and r.json()["hits"][0]["_id"] == docs[0]["_id"]

    done = await asyncio.to_thread(
        subprocess.run,
        [*command[:4], "no-such-index", "--url", database_url],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no index named" in done.stderr


async def test_scoring_knobs_are_validated_and_used(api: httpx.AsyncClient) -> None:
    name = f"knobs-{secrets.token_hex(3)}"
    r = await api.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN)
    assert r.status_code == 200
    path = f"/api/v1/indexes/{name}/settings"
    for bad in ({"verifyTop": 2.5}, {"aggregateWeight": -1}, {"verifyWeight": "2"}, {"inlierSaturation": 0},
                {"matchWeight": -0.5}, {"matchSaturation": 0}, {"regionMinInliers": 2.5}):
        r = await api.patch(path, json={"reverseImageSearch": bad}, headers=ADMIN)
        assert r.status_code == 400 and r.json()["code"] == "invalid_settings", (bad, r.text)
    knobs = {"aggregateWeight": 2.5, "verifyWeight": 3, "verifyTop": 30, "minInliers": 5, "inlierSaturation": 6,
             "matchWeight": 1.5, "matchSaturation": 12, "regionMinInliers": 3}
    r = await api.patch(path, json={"reverseImageSearch": knobs}, headers=ADMIN)
    assert r.status_code == 200, r.text
    from app.domain.reverse import params_for

    stored = (await api.get(f"/api/v1/indexes/{name}", headers=ADMIN)).json()["settings"]["reverseImageSearch"]
    p = params_for(stored, rerank.DEFAULT_PARAMS)
    used = (p.aggregate_weight, p.verify_weight, p.verify_top, p.min_inliers, p.inlier_saturation,
            p.match_weight, p.match_saturation, p.region_min_inliers)
    assert used == (2.5, 3.0, 30, 5, 6.0, 1.5, 12.0, 3)
