"""The inference backend against plain torch, and what the service makes of it, in one run.

    python -m benchmarks.inference_bench                               # default arch, 128 products, 40 queries
    python -m benchmarks.inference_bench --model offline --products 64 --queries 20

One run on one machine prints side by side:

1. plain torch (`EmbeddingModel`, torch's threads as the service sets them): batch-1 forward
   p50 ms on decoded query photos, and batch-16 images/s on decoded catalog images
   (measured before and after the service phase; the faster is the reference, so load
   drifting during the run can only make the ratios below pessimistic);
2. the same for the ONNX Runtime backend's fp32 and int8 graphs (the exported graphs the
   service uses, `app.vision.backend`), with their cosine to torch on the catalog images and
   the int8 quality guard's verdict on them, and for the fp32 graph on OpenVINO (the service's
   LOOKALIKE_INFERENCE_RUNTIME=auto runs the faster of the two, measured at model load);
3. through HTTP (`lookalike serve` with its defaults, embedded PostgreSQL in a temp dir): ingest
   products/s (reverse search off, batches of 64, two calls in flight), the index's
   `inference` settings (backend, precision and the guard's numbers on its first batch),
   then, with reverse search turned on and the local-feature backfill finished, Search by
   Image and reverse image search p50 at one client, and their recall@1/@10;
4. the ratios the issue sets targets for: Search by Image p50 / torch batch-1 forward
   (<= 0.85), reverse p50 / torch batch-1 forward (<= 1.6), ingest products/s / torch batch-16
   images/s (>= 1.25).

Writes bench-results/inference-<model>.json and a PNG beside it. Random weights: the
compute (and so the latency) is that of the trained model; the int8 guard's verdict is not
(random DINOv2 gives nearly identical embeddings for all images, so neighbour order is noise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from app.samples.wild import generate_benchmark
from benchmarks.ingest_bench import KEY, MODELS, _free_port, _start_service, stop_service
from benchmarks.quality_bench import _jpeg, _latency, _quality, _stages, served_catalog
from tests.imageserver import ImageServer

KINDS = (("search_by_image", "/search"), ("reverse_image_search", "/reverse-image-search"))
TARGETS = {"sbi_to_forward": 0.85, "reverse_to_forward": 1.6, "ingest_to_batch": 1.25}
BATCH = 16


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _timed_runs(fn: Any, items: list[Any], runs: int) -> list[float]:
    """ms of fn(item) for `runs` items (cycling), on one dedicated thread as the service's embedder runs them."""

    def one(item: Any) -> float:
        started = time.perf_counter()
        fn(item)
        return (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(max_workers=1) as infer:
        for item in items[:2]:  # warm-up
            infer.submit(one, item).result()
        return [infer.submit(one, items[i % len(items)]).result() for i in range(runs)]


def measure_model(
    model: Any, precision: str, queries: list[Image.Image], catalog: list[Image.Image], runs: int
) -> dict[str, Any]:
    """Batch-1 p50 over query photos and batch-16 images/s over catalog images (preprocessing included)."""
    single = _timed_runs(lambda img: model.embed([img], precision), queries, runs)
    batches = [catalog[i : i + BATCH] for i in range(0, len(catalog) - BATCH + 1, BATCH)][:4]
    batch_ms = _timed_runs(lambda b: model.embed(b, precision), batches, max(2, len(batches)))
    return {
        "batch1_p50_ms": round(float(np.median(single)), 2),
        "batch1_min_ms": round(min(single), 2),
        f"batch{BATCH}_images_per_s": round(BATCH * 1000 / float(np.median(batch_ms)), 2),
    }


def _torch_model(spec: Any) -> Any:
    import torch

    from app.config import Settings
    from app.vision.model import EmbeddingModel

    settings = Settings.from_env({})  # the service gets no LOOKALIKE_* variables from this benchmark
    if settings.inference_threads > 0:
        torch.set_num_threads(settings.inference_threads)
    return EmbeddingModel.load(spec, None)


def model_phase(spec: Any, queries: list[Image.Image], catalog: list[Image.Image], runs: int) -> dict[str, Any]:
    from app.vision import guard
    from app.vision.model import ModelRegistry

    out: dict[str, Any] = {"load_average": _load()}
    torch_model = _torch_model(spec)
    out["torch"] = measure_model(torch_model, "fp32", queries, catalog, runs)
    with tempfile.TemporaryDirectory() as graphs:
        started = time.perf_counter()
        onnx_model = ModelRegistry(None, backend="onnx", graph_dir=Path(graphs), fp32_runtime="onnxruntime").get(spec)
        out["export_and_load_s"] = round(time.perf_counter() - started, 1)
        out["providers"] = onnx_model.providers
        for precision in ("fp32", "int8"):
            out[f"onnx_{precision}"] = measure_model(onnx_model, precision, queries, catalog, runs)
        # the same fp32 graph on OpenVINO (the other runtime LOOKALIKE_INFERENCE_RUNTIME=auto weighs)
        openvino_model = ModelRegistry(None, backend="onnx", graph_dir=Path(graphs), fp32_runtime="openvino").get(spec)
        out["openvino_fp32"] = measure_model(openvino_model, "fp32", queries, catalog, runs)
        out["openvino_fp32"]["providers"] = openvino_model.providers
        del openvino_model
        sample = onnx_model.preprocess(catalog[: guard.MAX_SAMPLE])
        reference = torch_model.embed_tensor(sample)
        for precision in ("fp32", "int8"):
            vectors = onnx_model.embed_tensor(sample, precision)
            cosines = np.sum(reference * vectors, axis=1)
            out[f"onnx_{precision}"]["cosine_to_torch_min"] = round(float(cosines.min()), 5)
            out[f"onnx_{precision}"]["top10_overlap_with_torch"] = round(guard.top_k_overlap(reference, vectors, 10), 3)
        out["int8_guard_on_catalog"] = guard.check(onnx_model, sample).to_json()
    out["load_average_after"] = _load()
    return out


def service_phase(args: argparse.Namespace, model_json: dict[str, Any], catalog: list[Any], queries: list[Any]) -> dict:
    headers = {"Authorization": f"Bearer {KEY}"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, ImageServer() as server:
        docs = served_catalog(server, catalog)
        query_urls = [server.add(f"/queries/{q.id}.jpg", _jpeg(q.image, 85), "image/jpeg") for q in queries]
        port = _free_port()
        started = time.perf_counter()
        proc = _start_service(Path(tmp) / "data", port, extra_env=args.service_env)
        out["service_start_s"] = round(time.perf_counter() - started, 1)
        base = f"http://127.0.0.1:{port}/api/v1/indexes/bench"
        try:
            with httpx.Client(timeout=600) as client:
                started = time.perf_counter()
                created = client.post(base, json={"model": model_json}, headers=headers)
                created.raise_for_status()
                out["create_index_s"] = round(time.perf_counter() - started, 1)  # includes the export
                read = {"x-marqo-index-id": created.json()["indexId"]}
                out["ingest"] = asyncio.run(_ingest(base, docs, args.ingest_batch, 2))
                out["inference"] = client.get(f"{base}/settings", headers=headers).json().get("inference")
                client.patch(f"{base}/settings", json={"reverseImageSearch": {"enabled": True}}, headers=headers)
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    stats = client.get(f"{base}/stats", headers=headers).json()
                    if stats["reverseImageSearch"]["ready"]:
                        break
                    time.sleep(0.5)
                out["stats_inference"] = stats.get("inference")
                out["load_average_before_queries"] = _load()
                client.post(f"{base}/search", json={"q": query_urls[0]}, headers=read)  # warm-up
                client.post(f"{base}/reverse-image-search", json={"q": query_urls[0]}, headers=read)
                ranks: dict[str, list[int | None]] = {"search_by_image": [], "reverse_image_search": []}
                samples: dict[str, list[dict[str, Any]]] = {"search_by_image": [], "reverse_image_search": []}
                for query, url in zip(queries, query_urls, strict=True):
                    for kind, path in KINDS:
                        t = time.perf_counter()
                        r = client.post(base + path, json={"q": url, "limit": 10}, headers=read)
                        wall = (time.perf_counter() - t) * 1000
                        r.raise_for_status()
                        ids = [h["_id"] for h in r.json()["hits"]]
                        ranks[kind].append(ids.index(query.product_id) if query.product_id in ids else None)
                        samples[kind].append({"wall_ms": wall, "stages": _stages(r.headers.get("server-timing", ""))})
                for kind in ranks:
                    out[kind] = {**_quality(ranks[kind]), **_latency(samples[kind])}
                out["load_average_after_queries"] = _load()
        finally:
            stop_service(proc)
    return out


async def _ingest(base: str, docs: list[dict[str, Any]], batch: int, concurrency: int) -> dict[str, Any]:
    """Add `docs` in calls of `batch`, `concurrency` calls in flight; products/s over the whole run."""
    headers = {"Authorization": f"Bearer {KEY}"}
    slots = asyncio.Semaphore(concurrency)
    failures = 0

    async def post(client: httpx.AsyncClient, start: int) -> None:
        nonlocal failures
        async with slots:
            r = await client.post(f"{base}/documents", json={"documents": docs[start : start + batch]}, headers=headers)
        failures += sum(1 for item in r.json()["items"] if item["status"] != 200)

    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(post(client, s) for s in range(0, len(docs), batch)))
        elapsed = time.perf_counter() - started
    return {"seconds": round(elapsed, 3), "products_per_s": round(len(docs) / elapsed, 2), "failures": failures}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, s, r = result["model_alone"], result["service"], result["ratios"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4))
    labels = ["torch\nbatch 1", "ORT fp32\nbatch 1", "OpenVINO\nfp32 b1", "ORT int8\nbatch 1", "Search by\nImage p50"]
    labels.append("reverse\np50")
    values = [
        result["reference"]["torch_batch1_ms"],
        m["onnx_fp32"]["batch1_p50_ms"],
        m["openvino_fp32"]["batch1_p50_ms"],
        m["onnx_int8"]["batch1_p50_ms"],
        s["search_by_image"]["p50_ms"],
        s["reverse_image_search"]["p50_ms"],
    ]
    bars = left.bar(labels, values, color=["tab:grey", "tab:blue", "tab:purple", "tab:cyan", "tab:green", "tab:orange"])
    left.bar_label(bars, fmt="%.0f")
    left.set_ylabel("ms")
    left.set_title(
        f"latency: SBI/forward {r['sbi_to_forward']:.2f} (target ≤ {TARGETS['sbi_to_forward']}), "
        f"reverse/forward {r['reverse_to_forward']:.2f} (≤ {TARGETS['reverse_to_forward']})",
        fontsize=8,
    )
    labels = ["torch\nbatch 16", "ORT fp32\nbatch 16", "OpenVINO\nfp32 b16", "ORT int8\nbatch 16", "ingest\nHTTP"]
    values = [
        result["reference"]["torch_batch16_images_per_s"],
        m["onnx_fp32"][f"batch{BATCH}_images_per_s"],
        m["openvino_fp32"][f"batch{BATCH}_images_per_s"],
        m["onnx_int8"][f"batch{BATCH}_images_per_s"],
        s["ingest"]["products_per_s"],
    ]
    bars = right.bar(labels, values, color=["tab:grey", "tab:blue", "tab:purple", "tab:cyan", "tab:green"])
    right.bar_label(bars, fmt="%.1f")
    right.set_ylabel("images (products) per second")
    right.set_title(
        f"throughput: ingest/torch batch {r['ingest_to_batch']:.2f} (target ≥ {TARGETS['ingest_to_batch']}); "
        f"index precision {(s.get('inference') or {}).get('precision')}",
        fontsize=8,
    )
    model = result["model"]
    fig.suptitle(f"{model['name']} @{model.get('imageSize')}, load {result['load_average_at_start']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.vision.decode import decode_image
    from app.vision.model import ModelSpec

    model_json = MODELS[args.model]
    spec = ModelSpec.parse(model_json)
    catalog, queries = generate_benchmark(args.products, args.queries, seed=args.seed)
    decoded_catalog = [decode_image(_jpeg(item.image), 40_000_000) for item in catalog]
    decoded_queries = [decode_image(_jpeg(q.image, 85), 40_000_000) for q in queries]
    result: dict[str, Any] = {
        "benchmark": "inference",
        "model": model_json,
        "products": len(catalog),
        "queries": len(queries),
        "service_env": args.service_env,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_at_start": _load(),
        "note": "random weights: latency as trained weights; quality and the int8 verdict are not",
    }
    result["model_alone"] = model_phase(spec, decoded_queries, decoded_catalog, args.runs)
    result["service"] = service_phase(args, model_json, catalog, queries)
    again = measure_model(_torch_model(spec), "fp32", decoded_queries, decoded_catalog, args.runs)
    result["torch_after_service"] = again
    before = result["model_alone"]["torch"]
    reference = {
        "torch_batch1_ms": min(before["batch1_p50_ms"], again["batch1_p50_ms"]),
        "torch_batch16_images_per_s": max(before[f"batch{BATCH}_images_per_s"], again[f"batch{BATCH}_images_per_s"]),
    }
    result["reference"] = reference
    s = result["service"]
    result["ratios"] = {
        "sbi_to_forward": round(s["search_by_image"]["p50_ms"] / reference["torch_batch1_ms"], 3),
        "reverse_to_forward": round(s["reverse_image_search"]["p50_ms"] / reference["torch_batch1_ms"], 3),
        "ingest_to_batch": round(s["ingest"]["products_per_s"] / reference["torch_batch16_images_per_s"], 3),
        "onnx_fp32_batch1_to_torch": round(
            result["model_alone"]["onnx_fp32"]["batch1_p50_ms"] / reference["torch_batch1_ms"], 3
        ),
        "onnx_int8_batch1_to_torch": round(
            result["model_alone"]["onnx_int8"]["batch1_p50_ms"] / reference["torch_batch1_ms"], 3
        ),
    }
    result["targets"] = TARGETS
    result["met"] = {
        "sbi_to_forward": result["ratios"]["sbi_to_forward"] <= TARGETS["sbi_to_forward"],
        "reverse_to_forward": result["ratios"]["reverse_to_forward"] <= TARGETS["reverse_to_forward"],
        "ingest_to_batch": result["ratios"]["ingest_to_batch"] >= TARGETS["ingest_to_batch"],
    }
    result["load_average_at_end"] = _load()
    return result


def print_table(result: dict[str, Any]) -> None:
    m, s, ref, r = result["model_alone"], result["service"], result["reference"], result["ratios"]
    b = f"batch{BATCH}_images_per_s"
    print(f"{result['model']['name']} @{result['model'].get('imageSize')}  load {result['load_average_at_start']}")
    print(f"{'':28}{'batch-1 ms':>12}{'batch-16 img/s':>16}")
    print(f"{'plain torch (reference)':28}{ref['torch_batch1_ms']:>12.1f}{ref['torch_batch16_images_per_s']:>16.1f}")
    for p in ("fp32", "int8"):
        x = m[f"onnx_{p}"]
        cosine = x["cosine_to_torch_min"]
        print(f"{'onnxruntime ' + p:28}{x['batch1_p50_ms']:>12.1f}{x[b]:>16.1f}   cosine to torch >= {cosine}")
    x = m["openvino_fp32"]
    print(f"{'openvino fp32':28}{x['batch1_p50_ms']:>12.1f}{x[b]:>16.1f}")
    print(f"service fp32 runtime (auto): {(s.get('stats_inference') or {}).get('providers')}")
    inference = s.get("inference") or {}
    print(f"index inference: {inference.get('backend')} {inference.get('precision')}  guard {inference.get('guard')}")
    sbi, rev = s["search_by_image"], s["reverse_image_search"]
    print(f"Search by Image p50 {sbi['p50_ms']:.1f} ms = {r['sbi_to_forward']:.2f} x forward (target <= 0.85)")
    print(f"reverse search  p50 {rev['p50_ms']:.1f} ms = {r['reverse_to_forward']:.2f} x forward (target <= 1.6)")
    print(f"ingest {s['ingest']['products_per_s']:.2f} products/s = {r['ingest_to_batch']:.2f} x torch batch (>= 1.25)")
    print(f"recall@1/@10: SBI {sbi['recall_at_1']}/{sbi['recall_at_10']}, ", end="")
    print(f"reverse {rev['recall_at_1']}/{rev['recall_at_10']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="default-arch")
    parser.add_argument("--products", type=int, default=128)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--runs", type=int, default=20, help="batch-1 passes per backend")
    parser.add_argument("--ingest-batch", type=int, default=64, help="documents per add-documents call")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--backend", choices=("auto", "torch", "onnx"), default="auto", help="the service's LOOKALIKE_INFERENCE_BACKEND"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.service_env = {"LOOKALIKE_INFERENCE_BACKEND": args.backend}
    result = run(args)
    out = args.out or Path("bench-results") / f"inference-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    print_table(result)


if __name__ == "__main__":
    main()
