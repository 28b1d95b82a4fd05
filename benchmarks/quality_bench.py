"""Reverse image search vs Search by Image through the real HTTP API: quality and latency.

    python -m benchmarks.quality_bench                          # 500 products, 200 wild queries, offline model
    python -m benchmarks.quality_bench --model default-arch --products 200 --queries 60   # latency, default arch

Generates a catalog with look-alike distractors and in-the-wild query photos
(`app.samples.wild`), serves them from a loopback image server, runs `lookalike serve`
on embedded PostgreSQL in a temp dir, ingests the catalog with reverse search on, and
sends every query to `/search` (Search by Image) and `/reverse-image-search`. Reports
recall@1, recall@10 and MRR@10 for both, latency p50/p95 per endpoint and per stage
(from the Server-Timing header). Random weights: quality is a lower bound; latency
equals that of trained weights of the same architecture. Writes
bench-results/quality-<model>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.domain.regions import iou
from app.samples.wild import CATEGORIES, MultiQuery, generate_benchmark, generate_multi_queries, query_categories
from benchmarks.ingest_bench import KEY, MODELS, _free_port, _start_service, stop_service
from tests.imageserver import ImageServer


def _jpeg(image: Any, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def served_catalog(server: ImageServer, catalog: list[Any]) -> list[dict[str, Any]]:
    """Documents of the generated `catalog` (title, price), its images served by `server`."""
    return [
        {
            "_id": item.id,
            "productTitle": str(item.metadata.get("title", item.id)),
            "price": float(item.metadata.get("price", 1.0)),
            "variantImageUrl": server.add(f"/catalog/{item.id}.jpg", _jpeg(item.image), "image/jpeg"),
        }
        for item in catalog
    ]


def _stages(header: str) -> dict[str, float]:
    stages: dict[str, float] = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            stages[name] = float(dur)
    return stages


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 2) if ordered else 0.0


def _quality(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks)
    return {
        "recall_at_1": round(sum(1 for r in ranks if r == 0) / n, 4),
        "recall_at_10": round(sum(1 for r in ranks if r is not None and r < 10) / n, 4),
        "mrr_at_10": round(sum(1 / (r + 1) for r in ranks if r is not None and r < 10) / n, 4),
    }


def _latency(samples: list[dict[str, Any]]) -> dict[str, Any]:
    wall = [s["wall_ms"] for s in samples]
    out: dict[str, Any] = {"p50_ms": _percentile(wall, 0.5), "p95_ms": _percentile(wall, 0.95)}
    names = sorted({k for s in samples for k in s["stages"]})
    out["stages_p50_ms"] = {n: _percentile([s["stages"].get(n, 0.0) for s in samples], 0.5) for n in names}
    return out


def region_scores(regions: list[dict[str, Any]], products: list[dict[str, Any]], overlap: float) -> tuple[int, int]:
    """(products found, false regions): a product is found when it is some region's top hit and that
    region's box overlaps its paste box by `overlap` IoU; every other region is a false one."""
    found: set[str] = set()
    false = 0
    for region in regions:
        top = region["hits"][0]["_id"] if region["hits"] else None
        truth = next((p for p in products if p["product_id"] == top), None)
        if truth is not None and top not in found and iou(region["box"], truth["paste_box"]) >= overlap:
            found.add(top)
        else:
            false += 1
    return len(found), false


def multi_product(
    client: httpx.Client, base: str, read: dict[str, str], server: ImageServer, queries: list[MultiQuery]
) -> dict[str, Any]:
    """`regions: true` on photos of 2-4 products: per-product recall, false regions, latency."""
    found = {0.3: 0, 0.5: 0}
    false = {0.3: 0, 0.5: 0}
    products = regions_total = 0
    samples: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    for query in queries:
        url = server.add(f"/multi/{query.id}.jpg", _jpeg(query.image, 85), "image/jpeg")
        t = time.perf_counter()
        r = client.post(f"{base}/reverse-image-search", json={"q": url, "regions": True}, headers=read)
        wall = (time.perf_counter() - t) * 1000
        r.raise_for_status()
        samples.append({"wall_ms": wall, "stages": _stages(r.headers.get("server-timing", ""))})
        t = time.perf_counter()
        client.post(f"{base}/reverse-image-search", json={"q": url}, headers=read).raise_for_status()
        plain.append({"wall_ms": (time.perf_counter() - t) * 1000, "stages": {}})
        regions = r.json()["regions"]
        regions_total += len(regions)
        products += len(query.product_ids)
        for overlap in found:
            f, x = region_scores(regions, query.params["products"], overlap)
            found[overlap] += f
            false[overlap] += x
    n = len(queries)
    return {
        "photos": n,
        "products": products,
        "regions_per_photo": round(regions_total / n, 2),
        **{f"per_product_recall_iou{o}": round(found[o] / products, 4) for o in found},
        **{f"false_regions_per_photo_iou{o}": round(false[o] / n, 2) for o in false},
        "with_regions": _latency(samples),
        "without_regions": _latency(plain),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = MODELS[args.model]
    started = time.perf_counter()
    catalog, queries = generate_benchmark(
        args.products, args.queries, seed=args.seed, low_texture=args.low_texture, soft=args.soft
    )
    result: dict[str, Any] = {
        "benchmark": "quality",
        "model": model,
        "backend": args.backend,
        "precision": args.precision,
        "runtime": args.runtime,
        "products": len(catalog),
        "queries": len(queries),
        "seed": args.seed,
        "low_texture_products": args.low_texture,
        "reverse_search_knobs": json.loads(args.knobs or "{}"),
        "soft_fraction": args.soft,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "random-weight model: quality figures are a lower bound",
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "generate_s": round(time.perf_counter() - started, 1),
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    with tempfile.TemporaryDirectory() as tmp, ImageServer() as server:
        docs = []
        for item in catalog:
            url = server.add(f"/catalog/{item.id}.jpg", _jpeg(item.image), "image/jpeg")
            meta = item.metadata
            docs.append(
                {
                    "_id": item.id,
                    "productTitle": str(meta.get("title", item.id)),
                    "price": float(meta.get("price", 1.0)),
                    "brand": str(meta.get("brand", "")),
                    "productCollections": [str(meta.get("category", "catalog"))],
                    "variantImageUrl": url,
                }
            )
        query_urls = [server.add(f"/queries/{q.id}.jpg", _jpeg(q.image, 85), "image/jpeg") for q in queries]
        port = _free_port()
        service_env = {
            "LOOKALIKE_INFERENCE_BACKEND": args.backend,
            "LOOKALIKE_INFERENCE_PRECISION": args.precision,
            "LOOKALIKE_INFERENCE_RUNTIME": args.runtime,
        }
        proc = _start_service(Path(tmp) / "data", port, extra_env=service_env)
        base = f"http://127.0.0.1:{port}/api/v1/indexes/quality"
        try:
            with httpx.Client(timeout=600) as client:
                body = {"model": model, "reverseImageSearch": {"enabled": True, **json.loads(args.knobs or "{}")}}
                created = client.post(base, json=body, headers=headers)
                created.raise_for_status()
                read = {"x-marqo-index-id": created.json()["indexId"]}
                t = time.perf_counter()
                failed = 0
                for start in range(0, len(docs), 128):
                    r = client.post(f"{base}/documents", json={"documents": docs[start : start + 128]}, headers=headers)
                    failed += sum(1 for item in r.json()["items"] if item["status"] != 200)
                result["ingest"] = {"seconds": round(time.perf_counter() - t, 1), "failed": failed}
                result["inference"] = client.get(f"{base}/settings", headers=headers).json().get("inference")
                client.post(f"{base}/search", json={"q": query_urls[0]}, headers=read)  # warm-up
                ranks: dict[str, list[int | None]] = {"search_by_image": [], "reverse_image_search": []}
                samples: dict[str, list[dict[str, Any]]] = {"search_by_image": [], "reverse_image_search": []}
                for query, url in zip(queries, query_urls, strict=True):
                    for name, path, body in (
                        ("search_by_image", "/search", {"q": url, "limit": 10}),
                        ("reverse_image_search", "/reverse-image-search", {"q": url, "limit": 10}),
                    ):
                        t = time.perf_counter()
                        r = client.post(base + path, json=body, headers=read)
                        wall = (time.perf_counter() - t) * 1000
                        r.raise_for_status()
                        ids = [h["_id"] for h in r.json()["hits"]]
                        ranks[name].append(ids.index(query.product_id) if query.product_id in ids else None)
                        samples[name].append({"wall_ms": wall, "stages": _stages(r.headers.get("server-timing", ""))})
                if args.multi:
                    multi = generate_multi_queries(catalog, args.multi, seed=args.seed)
                    result["multi_product"] = multi_product(client, base, read, server, multi)
        finally:
            stop_service(proc)
    for name in ranks:
        result[name] = {**_quality(ranks[name]), **_latency(samples[name])}
    cats = [query_categories(q, catalog) for q in queries]
    result["by_category"] = {
        c: {
            "n": sum(c in qc for qc in cats),
            **{
                name: _quality([r for r, qc in zip(ranks[name], cats, strict=True) if c in qc])
                for name in ranks
                if any(c in qc for qc in cats)
            },
        }
        for c in CATEGORIES
    }
    sbi, rev = result["search_by_image"], result["reverse_image_search"]
    result["recall_at_1_gain_points"] = round(100 * (rev["recall_at_1"] - sbi["recall_at_1"]), 1)
    result["latency_ratio_p50"] = round(rev["p50_ms"] / sbi["p50_ms"], 2) if sbi["p50_ms"] else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=500)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--model", choices=sorted(MODELS), default="offline")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--knobs", help='reverseImageSearch knobs as JSON, e.g. from lookalike calibrate')
    parser.add_argument("--low-texture", type=int, default=100, help="flat low-texture products added")
    parser.add_argument("--soft", type=float, default=0.2, help="fraction of motion-blurred / soft photos")
    parser.add_argument("--multi", type=int, default=40, help="photos of 2-4 products sent with regions: true")
    parser.add_argument(
        "--backend", choices=("auto", "torch", "onnx"), default="auto", help="the service's LOOKALIKE_INFERENCE_BACKEND"
    )
    parser.add_argument(
        "--precision", choices=("auto", "fp32"), default="auto", help="the service's LOOKALIKE_INFERENCE_PRECISION"
    )
    parser.add_argument(
        "--runtime",
        choices=("auto", "onnxruntime", "openvino"),
        default="auto",
        help="the service's LOOKALIKE_INFERENCE_RUNTIME (which runtime runs the fp32 graph)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args)
    suffix = "" if args.backend == "auto" and args.precision == "auto" else f"-{args.backend}-{args.precision}"
    out = args.out or Path("bench-results") / f"quality-{args.model}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
