"""Two versions of the code side by side: the same photos through each checkout's service, interleaved.

    git worktree add /tmp/before <commit>
    python -m benchmarks.checkout_ab_bench --checkouts /tmp/before,. --model default-arch

One service per checkout (each started from its own directory, embedded PostgreSQL in a temp
dir), one index each on the same generated catalog (`app.samples.wild`); once every index's
local features are in (the last product verifies against its own image), each photo goes to
Search by Image and reverse image search of every service in turn, so the machine's load drifts
alike for all. `--knobs LABEL=JSON` (repeatable) gives each checkout one index per set of
reverse-search knobs instead, e.g. `--knobs auto= --knobs one='{"queryCrops": 1}'`. A first
round warms up and is not counted. Reports p50 wall time and per stage
(Server-Timing) for each checkout, and reverse / Search by Image. Writes
bench-results/checkout-ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.samples.wild import generate_benchmark
from benchmarks.ingest_bench import KEY, MODELS, _free_port, _start_service, stop_service
from benchmarks.quality_bench import _jpeg, _stages, served_catalog
from tests.imageserver import ImageServer

HEADERS = {"Authorization": f"Bearer {KEY}"}


def _p50(samples: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(s.get(key, 0.0) for s in samples), 1)


def _start_in(checkout: Path, data_dir: Path) -> tuple[int, Any]:
    """The service of `checkout` (its own `app` package first on the path)."""
    here, path = Path.cwd(), os.environ.get("PYTHONPATH")
    os.chdir(checkout)
    os.environ["PYTHONPATH"] = str(checkout)
    try:
        port = _free_port()
        return port, _start_service(data_dir, port)
    finally:
        os.chdir(here)
        if path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = path


def _ready(client: httpx.Client, base: str, read: dict[str, str], url: str, timeout_s: float = 300) -> None:
    """Wait until the index's local features are in: the last product verifies against its own image."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        hits = client.post(f"{base}/reverse-image-search", json={"q": url}, headers=read).json().get("hits", [])
        if hits and "_match" in hits[0]:
            return
        time.sleep(1)
    raise RuntimeError(f"{base}: local features not ready after {timeout_s} s")


def _labelled_knobs(text: str) -> tuple[str, dict[str, Any]]:
    label, _, knobs = text.partition("=")
    return label, json.loads(knobs or "{}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    checkouts = [Path(c).resolve() for c in args.checkouts.split(",")]
    catalog, queries = generate_benchmark(args.products, args.queries, seed=args.seed)
    result: dict[str, Any] = {
        "benchmark": "checkout-ab",
        "model": MODELS[args.model],
        "products": len(catalog),
        "queries": len(queries),
        "loadavg_at_start": os.getloadavg(),
    }
    services: dict[str, tuple[int, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, ImageServer() as server:
        docs = served_catalog(server, catalog)
        urls = [server.add(f"/queries/{q.id}.jpg", _jpeg(q.image, 85), "image/jpeg") for q in queries]
        try:
            for i, checkout in enumerate(checkouts):
                services[str(checkout)] = _start_in(checkout, Path(tmp) / f"data{i}")
            with httpx.Client(timeout=600) as client:
                indexes: dict[str, tuple[str, dict[str, str]]] = {}
                variants = [(service, label, knobs) for service in services for label, knobs in args.knobs]
                for service, label, knobs in variants:
                    port = services[service][0]
                    name = f"{service} {label}".rstrip()
                    base = f"http://127.0.0.1:{port}/api/v1/indexes/ab-{label or 'default'}"
                    body = {"model": MODELS[args.model], "reverseImageSearch": {"enabled": True, **knobs}}
                    created = client.post(base, json=body, headers=HEADERS)
                    created.raise_for_status()
                    read = {"x-marqo-index-id": created.json()["indexId"]}
                    for start in range(0, len(docs), 64):
                        batch = {"documents": docs[start : start + 64]}
                        r = client.post(f"{base}/documents", json=batch, headers=HEADERS)
                        r.raise_for_status()
                        if r.json()["errors"]:
                            raise RuntimeError(r.text[:500])
                    indexes[name] = (base, read)
                for base, read in indexes.values():
                    _ready(client, base, read, docs[-1]["variantImageUrl"])
                samples: dict[str, dict[str, list[dict[str, float]]]] = {n: {"sbi": [], "rev": []} for n in indexes}
                for counted in (False, True):
                    for url in urls:
                        for name, (base, read) in indexes.items():
                            for kind, path in (("sbi", "/search"), ("rev", "/reverse-image-search")):
                                t = time.perf_counter()
                                r = client.post(base + path, json={"q": url, "limit": 10}, headers=read)
                                wall = (time.perf_counter() - t) * 1000
                                r.raise_for_status()
                                if counted:
                                    stages = _stages(r.headers.get("server-timing", ""))
                                    samples[name][kind].append({"wall": wall, **stages})
        finally:
            for _, proc in services.values():
                stop_service(proc)
    result["loadavg_at_end"] = os.getloadavg()
    result["knobs"] = dict(args.knobs)
    result["checkouts"] = {}
    for name, got in samples.items():
        sbi, rev = _p50(got["sbi"], "wall"), _p50(got["rev"], "wall")
        stages = sorted({k for s in got["rev"] for k in s} - {"wall"})
        result["checkouts"][name] = {
            "search_by_image_p50_ms": sbi,
            "reverse_p50_ms": rev,
            "reverse_over_search_by_image": round(rev / sbi, 2) if sbi else None,
            "reverse_stages_p50_ms": {k: _p50(got["rev"], k) for k in stages},
            # a stage some requests skip (crops on demand) counts 0 in their p50; this says how many ran it
            "reverse_stage_share": {k: round(sum(k in s for s in got["rev"]) / len(got["rev"]), 3) for k in stages},
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkouts", required=True, help="comma-separated checkout directories")
    parser.add_argument("--model", choices=sorted(MODELS), default="default-arch")
    parser.add_argument("--products", type=int, default=128)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--knobs",
        action="append",
        type=_labelled_knobs,
        help="LABEL=JSON reverse-search knobs of one more index per checkout (repeatable; default: the defaults)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results") / "checkout-ab.json")
    args = parser.parse_args()
    args.knobs = args.knobs or [("", {})]
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
