"""`lookalike import`: batched, concurrent, failure report, resumable after a kill."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.importer import ImportAborted, ImportOptions, ImportState, csv_row_to_doc, run_import
from tests.conftest import ADMIN, ADMIN_KEY, REPO_ROOT, LiveServer
from tests.helpers import TEST_MODEL, product_image
from tests.imageserver import ImageServer


def _create_index(live: LiveServer, name: str) -> None:
    base = f"{live.url}/api/v1/indexes/{name}"
    httpx.delete(base, headers=ADMIN, timeout=30)
    r = httpx.post(base, json={"model": TEST_MODEL}, headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text


def _count(live: LiveServer, name: str) -> int:
    r = httpx.get(f"{live.url}/api/v1/indexes/{name}/stats", headers=ADMIN, timeout=30)
    return r.json()["numberOfDocuments"]


def _import_cmd(index: str, path: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", "import", index, str(path), "--url", url, "--api-key", ADMIN_KEY,
            "--quiet", *extra]


def _wait_quiet(images: ImageServer, quiet_s: float = 0.6, timeout: float = 30) -> None:
    """Until the server has stopped fetching (batches in flight when the client died finish server-side)."""
    deadline = time.monotonic() + timeout
    seen, since = len(images.requests), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if len(images.requests) != seen:
            seen, since = len(images.requests), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def test_jsonl_2000_with_broken_images_killed_halfway_resumes_without_redoing(
    live_server: LiveServer, images: ImageServer, tmp_path: Path
) -> None:
    index, n = "import-big", 2000
    _create_index(live_server, index)
    rng = random.Random(6)
    broken = set(rng.sample(range(1, n + 1), n // 20))  # 5% of lines: image URL answers 404
    path_of: dict[int, str] = {}
    with (tmp_path / "catalog.jsonl").open("w") as f:
        for line in range(1, n + 1):
            path = f"/imp/{line}.jpg"
            if line not in broken:
                images.add(path, product_image(50_000 + line, size=40))
            path_of[line] = path
            doc = {"_id": f"sku-{line}", "productTitle": f"Thing {line}", "price": line / 10,
                   "brand": rng.choice(["Acme", "Bolt"]), "variantImageUrl": images.url(path)}
            f.write(json.dumps(doc) + "\n")
    catalog = tmp_path / "catalog.jsonl"
    state_file = tmp_path / f"catalog.jsonl.{index}.import-state.jsonl"
    cmd = _import_cmd(index, catalog, live_server.url, "--concurrency", "4")

    # Run 1: killed (SIGKILL, no chance to clean up) once about a third is settled.
    first = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    done_at_kill: set[int] = set()
    while time.monotonic() < deadline and first.poll() is None:
        if state_file.exists():
            done_at_kill = ImportState.open(state_file, _header(state_file), restart=False).done
            if len(done_at_kill) >= n // 3:
                break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert n // 3 <= len(done_at_kill) < n, "the import finished before it could be interrupted"
    done_at_kill = ImportState.open(state_file, _header(state_file), restart=False).done  # what survived the kill
    _wait_quiet(images)
    requests_before_restart = len(images.requests)

    # Run 2: the same command resumes and finishes.
    started = time.perf_counter()
    second = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    assert second.returncode == 1, second.stdout + second.stderr  # 1 = finished, with failures
    print(f"\nresumed import: {n - len(done_at_kill)} lines in {elapsed:.1f} s; {second.stderr.strip()}")

    # Nothing settled before the kill was sent (so fetched or embedded) again.
    refetched = {p for p in images.requested_paths()[requests_before_restart:]}
    assert not refetched & {path_of[line] for line in done_at_kill}
    assert len(refetched) <= n - len(done_at_kill)

    # The failure report lists exactly the broken lines, with their ids and why.
    report = tmp_path / f"catalog.jsonl.{index}.failures.csv"
    with report.open() as f:
        rows = list(csv.DictReader(f))
    assert {int(r["line"]) for r in rows} == broken
    assert all(r["_id"] == f"sku-{r['line']}" and "404" in r["reason"] for r in rows), rows[:3]
    assert "100 failures" in second.stderr and str(report) in second.stderr

    assert _count(live_server, index) == n - len(broken)
    final = ImportState.open(state_file, _header(state_file), restart=False)
    assert final.done == set(range(1, n + 1))

    # Run 3: nothing left to do, nothing sent.
    before = len(images.requests)
    third = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert third.returncode == 1 and "imported 0 products" in third.stderr, third.stderr
    assert len(images.requests) == before


def _header(state_file: Path) -> dict[str, object]:
    return json.loads(state_file.read_text().splitlines()[0])


async def test_csv_columns_map_to_fields(live_server: LiveServer, images: ImageServer, tmp_path: Path) -> None:
    index = "import-csv"
    _create_index(live_server, index)
    image = images.add("/imp/csv.jpg", product_image(77, size=40))
    rows = [
        "_id,productTitle,price,variantImageUrl,productCollections,brand,stock,description",
        f"c1,Red Mug,12.5,{image},home; sale ,Acme,7,plain",
        f'c2,"Blue, Big Mug",20,{image},home,Bolt,,"two\nlines"',
        f"c3,Bad Price,cheap,{image},home,Acme,1,x",
        f",No Id,3,{image},home,Acme,1,x",
        f"c5,Bad Stock,3,{image},,Acme,lots,x",
    ]
    source = tmp_path / "catalog.csv"
    source.write_text("\n".join(rows) + "\n")
    options = ImportOptions(index=index, file=source, url=live_server.url, api_key=ADMIN_KEY, numeric={"stock"},
                            quiet=True)
    result = await run_import(options)
    assert (result.imported, result.failed) == (2, 3)
    async with httpx.AsyncClient(base_url=live_server.url, headers=ADMIN, timeout=30) as client:
        r = await client.post(f"/api/v1/indexes/{index}/get-documents", json={"documentIds": ["c1", "c2"]})
    got = r.json()["results"]
    c1, c2 = got
    assert c1["productCollections"] == ["home", "sale"] and c1["price"] == 12.5 and c1["stock"] == 7
    assert c2["productTitle"] == "Blue, Big Mug" and c2["price"] == 20 and "stock" not in c2
    assert c2["description"] == "two\nlines"
    with (tmp_path / f"catalog.csv.{index}.failures.csv").open() as f:
        failures = {int(r["line"]): (r["_id"], r["reason"]) for r in csv.DictReader(f)}
    # Line numbers are the file's: c2's quoted cell spans lines 3-4, so c3 is on line 5.
    assert failures[5] == ("c3", "price must be a number, got 'cheap'")
    assert failures[6][1].startswith("_id is required")
    assert failures[7] == ("c5", "stock must be a number, got 'lots'")


def test_csv_row_mapping_rules() -> None:
    doc = csv_row_to_doc(
        {"_id": "a", "price": "3", "tags": "x;y", "collections": "a; ;b", "note": " ", "n": "2.5"},
        numeric={"n"}, lists={"tags"},
    )
    assert doc == {"_id": "a", "price": 3.0, "tags": ["x", "y"], "collections": ["a", "b"], "n": 2.5}
    with pytest.raises(ValueError, match="more cells"):
        csv_row_to_doc({"_id": "a", None: "extra"}, set(), set())  # type: ignore[dict-item]


def test_state_file_survives_torn_writes_and_refuses_another_input(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    header = {"version": 1, "input": "a.jsonl", "sha256": "x", "index": "i", "format": "jsonl"}
    state = ImportState.open(path, header, restart=False)
    state.record([1, 2, 3, 7], [(7, "p7", "bad image")])
    with path.open("a") as f:
        f.write('{"done": [[8, 9')  # killed mid-write
    again = ImportState.open(path, header, restart=False)
    assert again.done == {1, 2, 3, 7} and again.failures == {7: ("p7", "bad image")}
    with pytest.raises(ImportAborted, match="sha256"):
        ImportState.open(path, {**header, "sha256": "y"}, restart=False)
    assert ImportState.open(path, {**header, "sha256": "y"}, restart=True).done == set()


async def test_wrong_key_or_index_stops_with_a_clear_message(live_server: LiveServer, tmp_path: Path) -> None:
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"_id": "a", "productTitle": "A", "price": 1, "variantImageUrl": "x"}) + "\n")
    with pytest.raises(ImportAborted, match="API key"):
        await run_import(ImportOptions(index="import-csv", file=source, url=live_server.url, api_key="nope",
                                       quiet=True))
    with pytest.raises(ImportAborted, match="create the index first"):
        await run_import(ImportOptions(index="no-such-index", file=source, url=live_server.url, api_key=ADMIN_KEY,
                                       quiet=True, restart=True))
