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
  with the single-product query keypoints and with the regions stage's own (`reverse.region_features`);
- and what naming a product *without* verification could add there: each product the regions
  keypoints do not verify, named by the model-independent cues (colour descriptor + keypoint
  aggregate cosine against every catalog product) in its true paste box (an oracle box), and in
  the boxes the regions stage proposes once the verified products are painted over
  (`reverse._proposal_boxes` plus saliency), accepted best margin first (top-1 minus top-2 cue
  score) at several margin thresholds: true regions (the missed product, IoU >= 0.3) and false ones.

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
from app.domain.regions import MAX_REGIONS, NEW_REGION_OVERLAP, iou
from app.domain.reverse import _proposal_boxes, _residual, region_features
from app.samples import wild
from app.vision import aggregate, colour, crops
from app.vision import local_features as lf
from benchmarks.quality_bench import _jpeg


def _as_sent(image: Image.Image, quality: int = 85) -> Image.Image:
    """The photo as quality_bench sends it (JPEG), decoded."""
    return Image.open(io.BytesIO(_jpeg(image, quality))).convert("RGB")


MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2)
Box = tuple[float, float, float, float]
# one multi-product photo as the regions stage sees it: the photo as sent, its regions keypoints,
# and their verification against every catalog product
RegionView = tuple[Image.Image, lf.LocalFeatures, list[lf.Verification]]


def _located(v: lf.Verification, paste_box: Any, p: rerank.RerankParams) -> bool:
    """Verified where the product was pasted (the box overlaps it, IoU >= 0.3)."""
    return rerank.counts_as_verified(v, p) and v.box is not None and iou(v.box, paste_box) >= 0.3


def _cue_scores(
    image: Image.Image,
    keypoints: lf.LocalFeatures,
    boxes: list[Box],
    catalog_colours: np.ndarray,
    catalog_aggregates: np.ndarray,
) -> np.ndarray:
    """(boxes, catalog) colour cosine + keypoint-aggregate cosine (0 where a box has too few keypoints)."""
    if not boxes:
        return np.zeros((0, len(catalog_colours)), np.float32)
    scores = colour.box_colours(image, boxes) @ catalog_colours.T
    for i, box in enumerate(boxes):
        described = aggregate.box_aggregates(keypoints, [box])
        if len(described):
            scores[i] += catalog_aggregates @ described[0]
    return scores


def _top_margin(scores: np.ndarray, excluded: list[int]) -> tuple[int, float]:
    s = scores.copy()
    s[excluded] = -np.inf
    first, second = np.argsort(-s)[:2]
    return int(first), float(s[first] - s[second])


def unverified_naming(
    photos: list[wild.MultiQuery],
    views: list[RegionView],
    ids: list[str],
    features: list[lf.LocalFeatures],
    sent: list[Image.Image],
) -> dict[str, Any]:
    """What the colour and keypoint-aggregate cues could add to verification-based regions
    (`views`: each photo's regions keypoints and verifications, as the ceiling above measured them)."""
    p = rerank.DEFAULT_PARAMS
    catalog_colours = np.stack([colour.catalog_colour(image) for image in sent])
    catalog_aggregates = np.stack(
        [a if (a := aggregate.image_aggregate(f)) is not None else np.zeros(aggregate.AGGREGATE_DIM) for f in features]
    ).astype(np.float32)
    oracle_ranks: list[int] = []
    proposals: list[tuple[list[tuple[float, int, Box]], list[tuple[int, Box]], int]] = []
    located_total = 0
    for photo, (image, keypoints, vs) in zip(photos, views, strict=True):
        located: list[tuple[int, Box]] = []
        missed: list[tuple[int, Box]] = []
        for product in photo.params["products"]:
            t = ids.index(product["product_id"])
            v = vs[t]
            if _located(v, product["paste_box"], p) and v.box is not None:
                located.append((t, v.box))
            else:
                missed.append((t, tuple(product["paste_box"])))
        located_total += len(located)
        excluded = [t for t, _ in located]
        for (t, _box), scores in zip(
            missed,
            _cue_scores(image, keypoints, [b for _, b in missed], catalog_colours, catalog_aggregates),
            strict=True,
        ):
            s = scores.copy()
            s[excluded] = -np.inf
            oracle_ranks.append(int((s > s[t]).sum()))
        masked, residual = _residual(image, keypoints, [b for _, b in located])
        describe, _, _ = _proposal_boxes(image, masked, residual, 3)
        boxes = list(dict.fromkeys(tuple(float(v) for v in b) for b in [*describe, *crops.crop_boxes(masked)]))
        boxes = [b for b in boxes if all(iou(b, lb) < NEW_REGION_OVERLAP for _, lb in located)]
        scored = _cue_scores(image, residual, boxes, catalog_colours, catalog_aggregates)
        ranked = sorted(
            ((m, t, b) for b, s in zip(boxes, scored, strict=True) for t, m in [_top_margin(s, excluded)]),
            key=lambda r: -r[0],
        )
        proposals.append((ranked, missed, len(located)))
    by_margin = {}
    for threshold in MARGINS:
        true = false = 0
        for ranked, missed, n_located in proposals:
            taken: list[Box] = []
            named: set[int] = set()
            for margin, t, box in ranked:
                if margin < threshold or n_located + len(taken) >= MAX_REGIONS:
                    break
                if t in named or any(iou(box, b) >= NEW_REGION_OVERLAP for b in taken):
                    continue
                taken.append(box)
                named.add(t)
                if any(t == mt and iou(box, mb) >= 0.3 for mt, mb in missed):
                    true += 1
                else:
                    false += 1
        by_margin[str(threshold)] = {
            "true_regions": true,
            "false_regions_per_photo": round(false / max(1, len(photos)), 3),
            "per_product_recall_with_verified": round(
                (located_total + true) / max(1, located_total + sum(len(m) for _, m, _ in proposals)), 4
            ),
        }
    ranks = np.array(oracle_ranks)
    return {
        "verified_products": located_total,
        "missed_products": len(oracle_ranks),
        "oracle_box_named_first": round(float(np.mean(ranks == 0)), 4) if len(ranks) else 0.0,
        "oracle_box_in_top5": round(float(np.mean(ranks < 5)), 4) if len(ranks) else 0.0,
        "proposal_boxes_by_margin": by_margin,
    }


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
    sent = [_as_sent(c.image, 90) for c in catalog]  # as quality_bench serves them
    features = [lf.extract_catalog_features(image) for image in sent]
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
        views: list[RegionView] = []
        for name, extract in (("query_keypoints", lf.extract_query_features), ("region_keypoints", region_features)):
            located: dict[str, list[bool]] = {}
            for photo in photos:
                image = _as_sent(photo.image)
                keypoints = extract(image)
                vs = lf.verify_candidates(keypoints, features)
                if name == "region_keypoints":
                    views.append((image, keypoints, vs))
                for product in photo.params["products"]:
                    ok = _located(vs[ids.index(product["product_id"])], product["paste_box"], p)
                    meta = by_id[product["product_id"]].metadata
                    texture = meta.get("texture", "plain" if meta.get("pattern") == "plain" else "textured")
                    for key in ("all", texture):
                        located.setdefault(key, []).append(ok)
            multi[name] = {k: {"n": len(v), "located": round(float(np.mean(v)), 4)} for k, v in located.items()}
        multi["unverified_naming"] = unverified_naming(photos, views, ids, features, sent)
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
