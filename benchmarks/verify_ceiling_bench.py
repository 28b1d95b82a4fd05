"""How much geometric verification can find at all: every catalog product verified against every photo.

    python -m benchmarks.verify_ceiling_bench [--products 200 --low-texture 60 --queries 100 --soft 0.25
                                               --multi 30 --seed 1]

Offline (no database, no global model): the hard-category catalog and photos of
`quality_bench` (same generator, same arguments, same photos), catalog features as stored at
ingest, query features as the service extracts them. No candidate pool: each photo is
verified against the whole catalog, so the figures are the ceiling of what reverse search can
locate with these keypoints, whatever the retrieval and the scoring:

- single-product photos, by category: the fraction whose true product verifies
  (`rerank.counts_as_verified`, i.e. it would carry `_match`), and the fraction where it also
  has the most colour-weighted inliers of the whole catalog;
- multi-product photos (2-4 products): the products verified where they were pasted (IoU >= 0.3),
  with the single-product query keypoints and with the regions stage's own (`reverse.region_features`).

Writes bench-results/verify-ceiling.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.domain import rerank
from app.domain.regions import iou
from app.domain.reverse import region_features
from app.samples import wild
from app.vision import local_features as lf
from benchmarks.quality_bench import _jpeg


def _as_sent(image: Image.Image, quality: int = 85) -> Image.Image:
    """The photo as quality_bench sends it (JPEG), decoded."""
    return Image.open(io.BytesIO(_jpeg(image, quality))).convert("RGB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=200)
    ap.add_argument("--low-texture", type=int, default=60)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--soft", type=float, default=0.25)
    ap.add_argument("--multi", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench-results/verify-ceiling.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    catalog, queries = wild.generate_benchmark(
        args.products, args.queries, seed=args.seed, low_texture=args.low_texture, soft=args.soft
    )
    ids = [c.id for c in catalog]
    features = [lf.extract_catalog_features(_as_sent(c.image, 90)) for c in catalog]  # as quality_bench serves them
    p = rerank.DEFAULT_PARAMS
    single: dict[str, list[tuple[bool, bool]]] = {}
    for q in queries:
        vs = lf.verify_candidates(lf.extract_query_features(_as_sent(q.image)), features)
        eff = np.array([v.inliers * v.colour_agreement if v.homography_ok else 0.0 for v in vs])
        t = ids.index(q.product_id)
        verified = rerank.counts_as_verified(vs[t], p)
        for category in ["all", *wild.query_categories(q, catalog)]:
            single.setdefault(category, []).append((verified, verified and eff[t] >= eff.max()))
    multi: dict[str, Any] = {}
    if args.multi:
        photos = wild.generate_multi_queries(catalog, args.multi, seed=args.seed)
        by_id = {c.id: c for c in catalog}
        for name, extract in (("query_keypoints", lf.extract_query_features), ("region_keypoints", region_features)):
            located: dict[str, list[bool]] = {}
            for photo in photos:
                vs = lf.verify_candidates(extract(_as_sent(photo.image)), features)
                for product in photo.params["products"]:
                    v = vs[ids.index(product["product_id"])]
                    box = v.box if rerank.counts_as_verified(v, p) else None
                    ok = box is not None and iou(box, product["paste_box"]) >= 0.3
                    meta = by_id[product["product_id"]].metadata
                    texture = meta.get("texture", "plain" if meta.get("pattern") == "plain" else "textured")
                    for key in ("all", texture):
                        located.setdefault(key, []).append(ok)
            multi[name] = {k: {"n": len(v), "located": round(float(np.mean(v)), 4)} for k, v in located.items()}
    report = {
        "benchmark": "verify_ceiling",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loadavg": os.getloadavg(),
        "single_product": {
            c: {
                "n": len(v),
                "true_product_verifies": round(float(np.mean([a for a, _ in v])), 4),
                "true_product_has_most_inliers": round(float(np.mean([b for _, b in v])), 4),
            }
            for c, v in single.items()
        },
        "multi_product": multi,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
