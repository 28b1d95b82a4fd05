"""What the colour cue costs reverse image search: the same queries with it on and off, interleaved.

    python -m benchmarks.colour_latency_bench --products 200 --low-texture 60 --queries 60

One service and one index (the quality benchmark's catalog, `app.samples.wild`); every query
photo is sent three times in a row: with the colour knobs at their defaults (`on`), with the
colour score but no colour leg (`colourPool` 0: `score_only`), and with `colourWeight` 0 and
`colourPool` 0 (no box descriptors, no colour leg: the pipeline as it was before the cue,
`off`), the order rotating from photo to photo, so the machine's load drifts alike for all.
Reports p50 wall time and per stage (Server-Timing) for each, and the median of the per-photo
differences from `off`. Writes bench-results/colour-latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.domain.rerank import DEFAULT_PARAMS
from app.samples.wild import generate_benchmark
from benchmarks.ingest_bench import KEY, MODELS, _free_port, _start_service, stop_service
from benchmarks.quality_bench import _jpeg, _latency, _stages
from tests.imageserver import ImageServer

MODES = {
    "on": {"colourWeight": DEFAULT_PARAMS.colour_weight, "colourPool": DEFAULT_PARAMS.colour_pool},
    "score_only": {"colourWeight": DEFAULT_PARAMS.colour_weight, "colourPool": 0},
    "off": {"colourWeight": 0.0, "colourPool": 0},
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    catalog, queries = generate_benchmark(
        args.products, args.queries, seed=args.seed, low_texture=args.low_texture, soft=args.soft
    )
    loadavg = Path("/proc/loadavg")
    result: dict[str, Any] = {
        "benchmark": "colour-latency",
        "model": MODELS[args.model],
        "products": len(catalog),
        "queries": len(queries),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "loadavg_start": loadavg.read_text().split()[:3] if loadavg.exists() else None,
        "modes": MODES,
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp, ImageServer() as server:
        docs = [
            {
                "_id": item.id,
                "productTitle": item.id,
                "price": 1.0,
                "variantImageUrl": server.add(f"/catalog/{item.id}.jpg", _jpeg(item.image), "image/jpeg"),
            }
            for item in catalog
        ]
        urls = [server.add(f"/queries/{q.id}.jpg", _jpeg(q.image, 85), "image/jpeg") for q in queries]
        port = _free_port()
        proc = _start_service(Path(tmp) / "data", port)
        base = f"http://127.0.0.1:{port}/api/v1/indexes/colour"
        try:
            with httpx.Client(timeout=600) as client:
                body = {"model": MODELS[args.model], "reverseImageSearch": {"enabled": True}}
                created = client.post(base, json=body, headers=headers)
                created.raise_for_status()
                read = {"x-marqo-index-id": created.json()["indexId"]}
                for start in range(0, len(docs), 128):
                    client.post(f"{base}/documents", json={"documents": docs[start : start + 128]}, headers=headers)
                client.post(f"{base}/reverse-image-search", json={"q": urls[0]}, headers=read)  # warm-up
                for i, url in enumerate(urls):
                    names = list(MODES)
                    for mode in names[i % 3 :] + names[: i % 3]:
                        patch = {"reverseImageSearch": MODES[mode]}
                        client.patch(f"{base}/settings", json=patch, headers=headers).raise_for_status()
                        t = time.perf_counter()
                        r = client.post(f"{base}/reverse-image-search", json={"q": url, "limit": 10}, headers=read)
                        wall = (time.perf_counter() - t) * 1000
                        r.raise_for_status()
                        samples[mode].append({"wall_ms": wall, "stages": _stages(r.headers.get("server-timing", ""))})
        finally:
            stop_service(proc)
    result["loadavg_end"] = loadavg.read_text().split()[:3] if loadavg.exists() else None
    stage_names = sorted({k for s in samples["off"] for k in s["stages"]})
    for mode, s in samples.items():
        result[mode] = _latency(s)
        if mode == "off":
            continue
        pairs = list(zip(s, samples["off"], strict=True))
        result[mode]["median_difference_from_off_ms"] = round(
            statistics.median(a["wall_ms"] - b["wall_ms"] for a, b in pairs), 2
        )
        result[mode]["median_stage_difference_from_off_ms"] = {
            n: round(statistics.median(a["stages"].get(n, 0.0) - b["stages"].get(n, 0.0) for a, b in pairs), 2)
            for n in stage_names
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--low-texture", type=int, default=60)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--soft", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", choices=sorted(MODELS), default="offline")
    parser.add_argument("--out", type=Path, default=Path("bench-results") / "colour-latency.json")
    args = parser.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
