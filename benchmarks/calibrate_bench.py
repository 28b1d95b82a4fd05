"""`lookalike calibrate` on a generated index, for two offline architectures.

    python -m benchmarks.calibrate_bench                       # 1,000 products, 100 photos, two models
    python -m benchmarks.calibrate_bench --products 200 --queries 40

Generates a catalog (`app.samples.wild`), serves its images from a loopback image server,
runs `lookalike serve` on embedded PostgreSQL in a temp dir, ingests the catalog into one
index per model (reverse search on), then runs `lookalike calibrate INDEX --url ... --json`
(the service runs the calibration) and records its report (before/after recall@1/@10 on all photos, on the
half it tuned on and on the held-out half), the chosen knobs and the wall time. Random
weights: which knobs win differs with the architecture, which is the point. Writes
bench-results/calibrate.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.samples.wild import generate_catalog
from benchmarks.ingest_bench import KEY, _free_port, _start_service, stop_service
from tests.imageserver import ImageServer

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vit_tiny@64": {"name": "vit_tiny_patch16_224", "pretrained": False, "imageSize": 64, "seed": 0},
    "resnet18@112": {"name": "resnet18", "pretrained": False, "imageSize": 112, "seed": 0},
}


def _jpeg(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--models", default=",".join(ARCHITECTURES))
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench-results/calibrate.json"))
    args = ap.parse_args()
    catalog = generate_catalog(args.products, seed=args.seed)
    result: dict[str, Any] = {
        "benchmark": "calibrate",
        "products": len(catalog),
        "queries": args.queries,
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
        "runs": {},
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    with tempfile.TemporaryDirectory() as tmp, ImageServer() as server:
        docs = [
            {"_id": c.id, "productTitle": c.metadata["productTitle"], "price": float(c.metadata["price"]),
             "variantImageUrl": server.add(f"/catalog/{c.id}.jpg", _jpeg(c.image), "image/jpeg")}
            for c in catalog
        ]  # fmt: skip
        data_dir = Path(tmp) / "data"
        port = _free_port()
        proc = _start_service(data_dir, port)
        try:
            with httpx.Client(timeout=600) as client:
                for label in args.models.split(","):
                    name = "cal-" + label.replace("@", "-").replace("_", "-")
                    base = f"http://127.0.0.1:{port}/api/v1/indexes/{name}"
                    body = {"model": ARCHITECTURES[label], "reverseImageSearch": {"enabled": True}}
                    client.post(base, json=body, headers=headers).raise_for_status()
                    t = time.perf_counter()
                    failed = 0
                    for start in range(0, len(docs), 128):
                        r = client.post(f"{base}/documents", json={"documents": docs[start : start + 128]},
                                        headers=headers)  # fmt: skip
                        r.raise_for_status()
                        failed += sum(1 for item in r.json()["items"] if item["status"] != 200)
                    if failed:
                        raise RuntimeError(f"{failed} products failed to ingest: {r.text[:300]}")
                    ingest_s = time.perf_counter() - t
                    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
                    t = time.perf_counter()
                    done = subprocess.run(
                        [sys.executable, "-m", "app.cli", "calibrate", name, "--url", f"http://127.0.0.1:{port}",
                         "--api-key", KEY, "--queries", str(args.queries), "--json"],
                        env=env, capture_output=True, text=True, timeout=3600,
                    )  # fmt: skip
                    wall = time.perf_counter() - t
                    if done.returncode != 0:
                        raise RuntimeError(done.stderr)
                    report = json.loads(done.stdout)
                    result["runs"][label] = {
                        "ingest_s": round(ingest_s, 1),
                        "calibrate_wall_s": round(wall, 1),
                        "loadavg_after": os.getloadavg(),
                        **report,
                    }
                    summary = {k: report[k] for k in ("before", "after", "knobs", "seconds")}
                    print(label, json.dumps(summary), flush=True)
        finally:
            stop_service(proc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
