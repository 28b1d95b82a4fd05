"""How well `_match.box` locates the product: IoU with the generator's paste box.

    python -m benchmarks.match_box_bench [--products 120 --queries 120 --seed 5]

Offline (no database): catalog features as stored at ingest, query features as the service
extracts them, each wild photo verified against its true product's features
(`local_features.verify_candidates`); for every photo where that counts as verified
(`rerank.counts_as_verified`, i.e. the hit would carry `_match`), the IoU of the projected
box (`reverse.match_of`) with the paste box. By category. Writes bench-results/match_box.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from app.domain import rerank
from app.domain.regions import iou
from app.domain.reverse import match_of
from app.samples import wild
from app.vision import local_features as lf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=120)
    ap.add_argument("--queries", type=int, default=120)
    ap.add_argument("--low-texture", type=int, default=40)
    ap.add_argument("--soft", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench-results/match_box.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    catalog = wild.generate_catalog(args.products, args.seed, args.low_texture)
    queries = wild.generate_queries(catalog, args.queries, args.seed, args.soft)
    by_id = {c.id: c for c in catalog}
    features = {q.product_id: lf.extract_catalog_features(by_id[q.product_id].image) for q in queries}
    per_category: dict[str, list[float]] = {}
    verified = 0
    for q in queries:
        v = lf.verify_candidates(lf.extract_query_features(q.image), [features[q.product_id]])[0]
        match = match_of(v, rerank.DEFAULT_PARAMS)
        if match is None:
            continue
        verified += 1
        overlap = iou(match["box"], q.params["paste_box"])
        for category in ["all", *wild.query_categories(q, catalog)]:
            per_category.setdefault(category, []).append(overlap)
    report = {
        "benchmark": "match_box",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loadavg": os.getloadavg(),
        "queries": len(queries),
        "verified": verified,
        "by_category": {
            c: {
                "n": len(v),
                "iou_at_least_0.5": round(float(np.mean(np.array(v) >= 0.5)), 4),
                "iou_median": round(float(np.median(v)), 3),
                "iou_p10": round(float(np.percentile(v, 10)), 3),
            }
            for c, v in per_category.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
