"""Ingest throughput through the real HTTP API vs the same model's raw batch inference.

    python -m benchmarks.ingest_bench --products 512 --model offline
    python -m benchmarks.ingest_bench --products 256 --model default-arch
    python -m benchmarks.ingest_bench --products 256 --model open-clip-b32

Starts `lookalike serve` (embedded PostgreSQL in a temp dir) and a loopback image
server, posts N products in batches of 128 (`--concurrency` requests in flight), then
measures the model alone embedding the same decoded images in batches. Writes JSON to
bench-results/ingest-<model>.json (and a PNG beside it). Both phases run on the same machine, one after the
other, so the ratio is meaningful even where absolute times are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from app.vision.model import OFFLINE_TEST_MODEL, ModelSpec, load_model
from app.vision.openclip import OFFLINE_OPEN_CLIP_MODEL
from tests.helpers import product_image
from tests.imageserver import ImageServer

MODELS: dict[str, dict[str, Any]] = {
    "offline": OFFLINE_TEST_MODEL,
    # The default model's architecture with random weights: the same compute as the real thing.
    "default-arch": {"name": "vit_small_patch14_dinov2", "pretrained": False, "imageSize": 224, "seed": 0},
    # An open_clip index (image + text towers; ingest runs the image tower only).
    "open-clip-b32": OFFLINE_OPEN_CLIP_MODEL,
}
KEY = "bench-admin-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_service(
    data_dir: Path, port: int, database_url: str | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`lookalike serve` on 127.0.0.1:port: embedded PostgreSQL in `data_dir`, or `database_url`.

    The service sees no LOOKALIKE_* variable of this process, only `extra_env`'s (e.g. the backend).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(
        LOOKALIKE_DATA_DIR=str(data_dir),
        LOOKALIKE_API_KEY=KEY,
        LOOKALIKE_IMAGE_FETCH_ALLOWLIST="127.0.0.1",
    )
    if database_url:
        env["LOOKALIKE_DATABASE_URL"] = database_url
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # a service that exited will not start
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("service did not start")


def stop_service(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """SIGTERM (a graceful shutdown that also stops the embedded PostgreSQL), SIGKILL if it hangs."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _images(n: int, size: int) -> list[bytes]:
    return [product_image(i, size=size) for i in range(n)]


async def _ingest(base: str, urls: list[str], batch: int, concurrency: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {KEY}"}
    slots = asyncio.Semaphore(concurrency)
    failures = 0
    latencies: list[float] = []

    async def post(client: httpx.AsyncClient, start: int) -> None:
        nonlocal failures
        docs = [
            {"_id": f"p{i}", "productTitle": f"Product {i}", "price": float(i), "variantImageUrl": urls[i]}
            for i in range(start, min(start + batch, len(urls)))
        ]
        async with slots:
            t = time.perf_counter()
            r = await client.post(f"{base}/documents", json={"documents": docs}, headers=headers)
            latencies.append(time.perf_counter() - t)
        body = r.json()
        failures += sum(1 for item in body["items"] if item["status"] != 200)

    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(post(client, s) for s in range(0, len(urls), batch)))
        elapsed = time.perf_counter() - started
    return {
        "seconds": round(elapsed, 3),
        "products_per_s": round(len(urls) / elapsed, 2),
        "failures": failures,
        "batch_latency_s": sorted(round(x, 3) for x in latencies),
    }


def _raw_throughput(spec: ModelSpec, images: list[bytes], batch: int) -> dict[str, Any]:
    model = load_model(spec, None)
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    model.embed(decoded[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(decoded), batch):
        model.embed(decoded[i : i + batch])
    elapsed = time.perf_counter() - started
    return {"seconds": round(elapsed, 3), "images_per_s": round(len(decoded) / elapsed, 2)}


def plot(results: dict[str, Any], path: Path) -> None:
    """Products per second through the API next to the model's raw images per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = results["raw_model"]
    labels = ["API ingest", "raw model\n(before)", "raw model\n(after)"]
    values = [results["api"]["products_per_s"], raw["before_images_per_s"], raw["after_images_per_s"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(labels, values, color=["tab:blue", "tab:grey", "tab:grey"])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("products (images) per second")
    ax.set_title(
        f"Ingest, {results['products']} products, {results['model']['name']} "
        f"(API/raw {results['ratio_api_to_raw']:.2f})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=512)
    parser.add_argument("--model", choices=sorted(MODELS), default="offline")
    parser.add_argument("--image-size", type=int, default=256, help="catalog image side in pixels")
    parser.add_argument("--batch", type=int, default=128, help="documents per add-documents call")
    parser.add_argument("--concurrency", type=int, default=2, help="add-documents calls in flight")
    parser.add_argument(
        "--image-delay-ms", type=int, default=0, help="a slow image host: wait this long before sending each image"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    model_json = MODELS[args.model]
    images = _images(args.products, args.image_size)
    results: dict[str, Any] = {
        "benchmark": "ingest",
        "model": model_json,
        "products": args.products,
        "image_size": args.image_size,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "image_delay_ms": args.image_delay_ms,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "random weights: same compute as trained weights",
    }
    spec = ModelSpec.parse(model_json)
    # Raw throughput before and after the API phase; the faster one is the reference, so
    # load drifting during the run can only make the reported ratio pessimistic.
    raw_before = _raw_throughput(spec, images, 32)
    with tempfile.TemporaryDirectory() as tmp, ImageServer() as server:
        urls = [server.add(f"/img/{i}.jpg", data, "image/jpeg") for i, data in enumerate(images)]
        for i in range(len(images)):  # each image is one chunk: one delay per image
            server.routes[f"/img/{i}.jpg"].delay_s = args.image_delay_ms / 1000
        port = _free_port()
        proc = _start_service(Path(tmp) / "data", port)
        try:
            base = f"http://127.0.0.1:{port}/api/v1/indexes/bench"
            r = httpx.post(base, json={"model": model_json}, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
            r.raise_for_status()
            results["api"] = asyncio.run(_ingest(base, urls, args.batch, args.concurrency))
        finally:
            stop_service(proc)
    raw_after = _raw_throughput(spec, images, 32)
    best = max((raw_before, raw_after), key=lambda r: r["images_per_s"])
    results["raw_model"] = {
        **best,
        "before_images_per_s": raw_before["images_per_s"],
        "after_images_per_s": raw_after["images_per_s"],
    }
    results["ratio_api_to_raw"] = round(results["api"]["products_per_s"] / results["raw_model"]["images_per_s"], 3)
    slow = f"-slow{args.image_delay_ms}ms" if args.image_delay_ms else ""
    out = args.out or Path("bench-results") / f"ingest-{args.model}{slow}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    summary = {k: results[k] for k in ("model", "products", "ratio_api_to_raw")}
    summary["api_products_per_s"] = results["api"]["products_per_s"]
    summary["raw_images_per_s"] = results["raw_model"]["images_per_s"]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
