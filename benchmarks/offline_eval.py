"""Offline evaluation of reverse image search vs Search by Image (no database, no HTTP).

Generates a catalog with look-alike distractors and "in the wild" queries
(`app.samples.wild`), embeds catalog images and query crops with a global model,
and compares

- Search by Image: one whole-image embedding, exact cosine kNN, top 10;
- reverse image search exactly as `app.domain.reverse` runs it: crop boxes of the
  query (`crops.query_boxes`); the first `n_crops` embedded; a merged candidate pool
  of the top `pool_size` products by embedding per embedded crop and the top
  `aggregate_pool` by local-feature aggregate per box (`app.vision.aggregate`);
  every candidate scored by both signals; the `verify_top` best by prior verified
  (`rerank.select_for_verification`, `local_features.verify_candidates`); the final
  ranking (`rerank.combine_scores`) restricted to the verified set, top 10;

reporting recall@1, recall@10 and MRR@10 for both, one-parameter sweeps around
`rerank.RerankParams` (aggregate pool and weight, verify weight, verify_top, crops,
pool size, inlier thresholds) and the query keypoint budget, and per-stage latency
on this machine.

Every (query, product) pair is verified once per query feature config: verification
of a candidate does not depend on the rest of the pool (the ratio test is inside each
candidate; RANSAC is seeded per call), so any pool is then a lookup. Embedding and
aggregate kNN are exact (numpy, float32), standing in for the HNSW queries on halfvec
columns.

The global models have RANDOM weights (no downloads here): quality figures are a
lower bound for what pretrained weights give. Run:

    .venv/bin/python -m benchmarks.offline_eval                 # full run, ~15 min on 2 cores
    .venv/bin/python -m benchmarks.offline_eval --quick         # smoke run, < 3 min

On a shared 2-core machine, OPENBLAS_NUM_THREADS=1 (as --threads 1 does for torch) keeps the
numpy stages (box aggregates, matching) from stalling on busy cores; the JSON records it.

Writes bench-results/offline_eval.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.domain import rerank
from app.samples.wild import CatalogItem, WildQuery, generate_benchmark, query_categories
from app.vision import aggregate
from app.vision import crops as crops_mod
from app.vision import local_features as lf

MODELS: dict[str, dict[str, Any]] = {
    # the project's offline test model (app.vision.model.OFFLINE_TEST_MODEL)
    "vit_tiny@64": {"name": "vit_tiny_patch16_224", "pretrained": False, "imageSize": 64, "seed": 0},
    "resnet18@112": {"name": "resnet18", "pretrained": False, "imageSize": 112, "seed": 0},
    # the default architecture; with random weights its outputs are nearly constant (LayerScale),
    # so it is here for latency, and its quality numbers mean little
    "efficientnet_b0@96": {"name": "efficientnet_b0", "pretrained": False, "imageSize": 96, "seed": 0},
    "dinov2_s14@224": {"name": "vit_small_patch14_dinov2", "pretrained": False, "imageSize": 224, "seed": 0},
}

DEFAULT_QUERY_CONFIG = (lf.QUERY_MAX_KEYPOINTS, lf.QUERY_MAX_SIDE)
# Query keypoint budget / analysis size: (max_keypoints, max_side); the first is the default.
QUERY_CONFIGS = [DEFAULT_QUERY_CONFIG, (512, 448), (512, 384)]

# One parameter of rerank.RerankParams at a time, the others at their defaults.
SWEEPS: dict[str, list[Any]] = {
    "aggregate_pool": [0, 10, 20, 40],  # 0: embedding retrieval only (aggregates still score)
    "aggregate_weight": [0.0, 1.0, 2.0, 4.0, 8.0],
    "verify_weight": [1.0, 2.0, 4.0],
    "verify_top": [30, 40, 60, 100, 0],  # 0: verify the whole merged pool
    "n_crops": [1, 2, 3, 4],
    "pool_size": [20, 40, 60, 100],
    "min_inliers": [4, 6, 8, 10],
    "inlier_saturation": [4.0, 8.0, 16.0],
}
# ... and two joint grids where the parameters interact.
GRIDS: dict[str, tuple[str, str]] = {
    "aggregate_weight x verify_weight": ("aggregate_weight", "verify_weight"),
    "aggregate_pool x verify_top": ("aggregate_pool", "verify_top"),
}


# --------------------------------------------------------------------------- global model


class GlobalModel:
    """`app.vision.model.EmbeddingModel` of a spec (random weights, nothing downloaded).

    By default plain torch; `model` and `precision` run a given (e.g. the service's ONNX
    Runtime) model at that precision instead, to compare with a service index that uses it.
    """

    def __init__(self, spec: dict[str, Any], model: Any = None, precision: str = "fp32"):
        from app.vision.model import EmbeddingModel, ModelSpec

        self.spec = spec
        self.precision = precision
        self._model = model if model is not None else EmbeddingModel.load(ModelSpec.parse(spec), None)

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        return np.asarray(self._model.embed(list(images), self.precision), np.float32)

    def single_image_ms(self) -> float:
        return float(self._model.single_image_ms(self.precision))


def embed_many(model: GlobalModel, images: Sequence[Any], batch: int = 32) -> np.ndarray:
    return np.concatenate([model.embed(images[i : i + batch]) for i in range(0, len(images), batch)])


# --------------------------------------------------------------------------- metrics


def rank_metrics(ranks: Sequence[int | None], k: int = 10) -> dict[str, float]:
    """ranks: 0-based rank of the true product in the returned list, None if absent."""
    n = len(ranks)
    r1 = sum(1 for r in ranks if r is not None and r < 1) / n
    r10 = sum(1 for r in ranks if r is not None and r < k) / n
    mrr = sum(1.0 / (r + 1) for r in ranks if r is not None and r < k) / n
    return {"recall@1": round(r1, 4), "recall@10": round(r10, 4), "mrr@10": round(mrr, 4)}


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else float("nan")


def stage_stats(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2), "mean_ms": round(statistics.fmean(ms), 2)}


# --------------------------------------------------------------------------- the pipeline, in numpy


@dataclass
class CatalogAggregates:
    """`aggregate.image_aggregate` of every catalog product's stored features (zero rows where None)."""

    vectors: np.ndarray  # (n_catalog, AGGREGATE_DIM)
    present: np.ndarray  # (n_catalog,) bool: the product has an aggregate

    @classmethod
    def of(cls, feats: Sequence[lf.LocalFeatures]) -> CatalogAggregates:
        vectors = np.zeros((len(feats), aggregate.AGGREGATE_DIM), np.float32)
        present = np.zeros(len(feats), bool)
        for i, f in enumerate(feats):
            a = aggregate.image_aggregate(f)
            if a is not None:
                vectors[i], present[i] = a, True
        return cls(vectors, present)

    def sims(self, box_aggregates: np.ndarray) -> np.ndarray:
        """(n_boxes, n_catalog) cosines; -inf for products without an aggregate (never retrieved)."""
        s = box_aggregates @ self.vectors.T
        s[:, ~self.present] = -np.inf
        return s


def top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` best finite scores, best first, ties by index (ORDER BY distance, pk LIMIT k)."""
    k = min(k, int(np.isfinite(sims).sum()))
    if k <= 0:
        return np.zeros(0, np.intp)
    part = np.argpartition(-sims, k - 1)[:k]
    return part[np.lexsort((part, -sims[part]))]


def candidate_pool(
    emb_sims: np.ndarray,
    agg_sims: np.ndarray,
    has_agg: np.ndarray,
    params: rerank.RerankParams,
    colour_sims: np.ndarray | None = None,
) -> list[rerank.Candidate]:
    """The merged pool of `app.domain.reverse`, in its order, each candidate scored by every signal.

    emb_sims: (boxes, n_catalog) cosines of each query box's crop embedding (the first
    `n_crops` are the embedded ones); agg_sims: (boxes with an aggregate, n_catalog) cosines
    of the box aggregates (`CatalogAggregates.sims`); colour_sims: (boxes, n_catalog) colour
    coefficients of the boxes (`app.vision.colour`), None: the colour cue is not modelled (the
    candidates carry no colour score, as in a service without the descriptors).
    """
    emb = emb_sims[: params.n_crops]
    keys: dict[int, None] = {}
    for row in emb:
        keys.update(dict.fromkeys(top_k(row, params.pool_size).tolist()))
    if params.aggregate_pool:
        for row in agg_sims:
            keys.update(dict.fromkeys(top_k(row, params.aggregate_pool).tolist()))
    if colour_sims is not None and params.colour_pool:
        for row in colour_sims:
            keys.update(dict.fromkeys(top_k(row, params.colour_pool).tolist()))
    g = emb.max(axis=0)
    a = agg_sims.max(axis=0) if len(agg_sims) else None
    c = colour_sims.max(axis=0) if colour_sims is not None and len(colour_sims) else None
    return [
        rerank.Candidate(
            k,
            float(g[k]),
            None,
            float(a[k]) if a is not None and has_agg[k] else None,
            float(c[k]) if c is not None else None,
        )
        for k in keys
    ]


def rerank_pool(
    candidates: Sequence[rerank.Candidate],
    verifications: Sequence[lf.Verification] | None,
    params: rerank.RerankParams,
) -> tuple[list[int], list[int]]:
    """(final ranking, verified keys) as `app.domain.reverse` computes them: the `verify_top` best
    by prior verified, the final ranking restricted to them. verifications=None: none found
    (every verification empty) -- the prior alone, over the same set."""
    to_verify: list[int] = rerank.select_for_verification(candidates, params)  # type: ignore[assignment]
    found = {k: verifications[k] for k in to_verify} if verifications is not None else {}
    verified = [replace(c, verification=found.get(c.product_key)) for c in candidates]  # type: ignore[call-overload]
    chosen = set(to_verify)
    ranked = [k for k, _ in rerank.combine_scores(verified, params) if k in chosen]
    return ranked, to_verify  # type: ignore[return-value]


# --------------------------------------------------------------------------- cached per-query inputs


@dataclass
class QueryFeatures:
    """One query feature config, model-independent: per query its features, box aggregate
    cosines against the catalog and the verification against every catalog product."""

    config: tuple[int, int]
    agg_sims: list[np.ndarray]
    verifications: list[list[lf.Verification]]
    info: dict[str, Any]


def extract_query(image: Any, config: tuple[int, int]) -> lf.LocalFeatures:
    if config == DEFAULT_QUERY_CONFIG:
        return lf.extract_query_features(image)
    return lf.extract_features(image, *config)


def verify_all(
    query_feats: Sequence[lf.LocalFeatures],
    cat_feats: Sequence[lf.LocalFeatures],
    vparams: lf.VerifyParams = lf.DEFAULT_VERIFY,
) -> list[list[lf.Verification]]:
    """Every (query, catalog product) verification: pools of any model or size are then lookups
    (homographies dropped, to keep the memory small)."""
    return [[replace(v, homography=None) for v in lf.verify_candidates(qf, cat_feats, vparams)] for qf in query_feats]


def query_features(
    queries: Sequence[WildQuery],
    boxes: Sequence[Sequence[crops_mod.Box]],
    config: tuple[int, int],
    cat_feats: Sequence[lf.LocalFeatures],
    cat_agg: CatalogAggregates,
) -> QueryFeatures:
    t0 = time.perf_counter()
    feats = [extract_query(q.image, config) for q in queries]
    t1 = time.perf_counter()
    aggs = [aggregate.box_aggregates(f, b) for f, b in zip(feats, boxes, strict=True)]
    t2 = time.perf_counter()
    ver = verify_all(feats, cat_feats)
    t3 = time.perf_counter()
    counts = [len(f) for f in feats]
    info = {
        "extract_ms_per_image": round((t1 - t0) / len(queries) * 1000, 1),
        "box_aggregates_ms_per_image": round((t2 - t1) / len(queries) * 1000, 1),
        "verify_ms_per_pair": round((t3 - t2) / (len(queries) * len(cat_feats)) * 1000, 3),
        "keypoints_p10_p50_p90": [pct(counts, 10), pct(counts, 50), pct(counts, 90)],
        "boxes_with_aggregate_mean": round(statistics.fmean(len(a) for a in aggs), 2),
    }
    return QueryFeatures(config, [cat_agg.sims(a) for a in aggs], ver, info)


def evaluate(
    emb_sims: Sequence[np.ndarray],
    qf: QueryFeatures,
    truth: Sequence[int],
    has_agg: np.ndarray,
    params: rerank.RerankParams,
    *,
    verify: bool = True,
    ranks_out: list[int | None] | None = None,
    top1_out: list[int] | None = None,
) -> dict[str, Any]:
    """Metrics of reverse search at `params`; also pool recall / mean size and how often the
    true product is among the verified."""
    ranks: list[int | None] = []
    in_pool = in_verified = pool_total = verified_total = 0
    for qi, t in enumerate(truth):
        cands = candidate_pool(emb_sims[qi], qf.agg_sims[qi], has_agg, params)
        ranked, to_verify = rerank_pool(cands, qf.verifications[qi] if verify else None, params)
        top = ranked[:10]
        ranks.append(top.index(t) if t in top else None)
        if top1_out is not None:
            top1_out.append(top[0])
        in_pool += any(c.product_key == t for c in cands)
        in_verified += t in to_verify
        pool_total += len(cands)
        verified_total += len(to_verify)
    if ranks_out is not None:
        ranks_out.extend(ranks)
    n = len(truth)
    return {
        **rank_metrics(ranks),
        "pool_recall": round(in_pool / n, 4),
        "pool_mean": round(pool_total / n, 1),
        "verified_recall": round(in_verified / n, 4),
        "verified_mean": round(verified_total / n, 1),
    }


@dataclass
class ModelRun:
    info: dict[str, Any]
    model: GlobalModel
    cat_emb: np.ndarray
    emb_sims: list[np.ndarray]  # per query: (boxes, n_catalog) cosines of each box's crop embedding


def embed_model(
    spec: dict[str, Any],
    catalog: Sequence[CatalogItem],
    queries: Sequence[WildQuery],
    boxes: Sequence[Sequence[crops_mod.Box]],
    truth: Sequence[int],
) -> ModelRun:
    t0 = time.perf_counter()
    model = GlobalModel(spec)
    load_s = time.perf_counter() - t0
    images = [c.image for c in catalog]
    model.embed(images[:4])  # warm-up
    t0 = time.perf_counter()
    cat_emb = embed_many(model, images)
    cat_s = time.perf_counter() - t0
    # every box embedded, in one batch per query as the service does: any n_crops is a prefix
    emb_sims = [model.embed(crops_mod.crop_images(q.image, b)) @ cat_emb.T for q, b in zip(queries, boxes, strict=True)]
    sbi: list[int | None] = []
    for sims, t in zip(emb_sims, truth, strict=True):  # boxes[0] is the whole frame
        top = top_k(sims[0], 10).tolist()
        sbi.append(top.index(t) if t in top else None)
    info = {
        "spec": spec,
        "dim": int(cat_emb.shape[1]),
        "load_s": round(load_s, 2),
        "catalog_embed_images_per_s": round(len(images) / cat_s, 1),
        "single_image_ms_here": round(model.single_image_ms(), 2),
        "search_by_image": rank_metrics(sbi),
        "_sbi_ranks": sbi,
    }
    return ModelRun(info, model, cat_emb, emb_sims)


def _row(model: str, sweep: str, values: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    default = all(getattr(rerank.DEFAULT_PARAMS, k, None) == v for k, v in values.items() if k != "query_features")
    if "query_features" in values:
        default = default and tuple(values["query_features"]) == DEFAULT_QUERY_CONFIG
    return {"model": model, "sweep": sweep, **values, "is_default": default, **metrics}


def run_sweeps(
    name: str, run: ModelRun, qfs: dict[tuple[int, int], QueryFeatures], truth: Sequence[int], has_agg: np.ndarray
) -> list[dict[str, Any]]:
    default = rerank.DEFAULT_PARAMS
    dq = qfs[DEFAULT_QUERY_CONFIG]
    rows = []
    for param, values in SWEEPS.items():
        for v in values:
            metrics = evaluate(run.emb_sims, dq, truth, has_agg, replace(default, **{param: v}))
            rows.append(_row(name, param, {param: v}, metrics))
    for grid, (p1, p2) in GRIDS.items():
        for v1, v2 in itertools.product(SWEEPS[p1], SWEEPS[p2]):
            metrics = evaluate(run.emb_sims, dq, truth, has_agg, replace(default, **{p1: v1, p2: v2}))
            rows.append(_row(name, grid, {p1: v1, p2: v2}, metrics))
    for cfg, qf in qfs.items():
        metrics = evaluate(run.emb_sims, qf, truth, has_agg, default)
        rows.append(_row(name, "query_features", {"query_features": list(cfg)}, metrics))
    return rows


def best_rows(sweep: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per model and sweep: the default row and the best (recall@1, then MRR@10, then recall@10)."""
    out: dict[str, Any] = {}
    for (model, name), group in itertools.groupby(sweep, key=lambda r: (r["model"], r["sweep"])):
        rows = list(group)
        best = max(rows, key=lambda r: (r["recall@1"], r["mrr@10"], r["recall@10"]))
        default = next((r for r in rows if r["is_default"]), None)
        out.setdefault(model, {})[name] = {"best": best, "default": default}
    return out


# --------------------------------------------------------------------------- latency run


class _Stages:
    """Wall and process-CPU time per named stage (CPU time is robust to a shared, busy machine)."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self._t: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def stop(self, name: str) -> None:
        w, c = self._t
        self.wall.setdefault(name, []).append(time.perf_counter() - w)
        self.cpu.setdefault(name, []).append(time.process_time() - c)
        self.start()

    def add(self, name: str, parts: Sequence[str]) -> None:
        for d in (self.wall, self.cpu):
            d[name] = [sum(v) for v in zip(*(d[p] for p in parts), strict=True)]

    def report(self) -> dict[str, Any]:
        return {k: {**stage_stats(v), "cpu": stage_stats(self.cpu[k])} for k, v in self.wall.items()}


def latency_run(
    model: GlobalModel,
    cat_emb: np.ndarray,
    cat_rows: Sequence[dict[str, Any]],
    cat_agg: CatalogAggregates,
    queries: Sequence[WildQuery],
    params: rerank.RerankParams,
) -> dict[str, Any]:
    """The whole reverse search per query, stage by stage, as `app.domain.reverse` runs it (crop
    count chosen by `rerank.crops_for_model` from this model's speed here, as queryCrops "auto";
    stored features deserialised as from the database; exact kNN in place of the HNSW queries)."""
    n_crops = rerank.crops_for_model(model.single_image_ms(), params)
    st = _Stages()
    pool_sizes, verified = [], []
    for q in queries:
        st.start()
        boxes = crops_mod.query_boxes(q.image)
        crops = crops_mod.crop_images(q.image, boxes[:n_crops])
        st.stop("boxes+crops")
        emb = model.embed(crops)
        st.stop("embed_crops")
        qf = lf.extract_query_features(q.image)
        st.stop("query_features")
        aggs = aggregate.box_aggregates(qf, boxes)
        st.stop("box_aggregates")
        cands = candidate_pool(emb @ cat_emb.T, cat_agg.sims(aggs), cat_agg.present, replace(params, n_crops=n_crops))
        st.stop("knn_exact (HNSW in the service)")
        keys = rerank.select_for_verification(cands, params)
        feats = [lf.deserialize(cat_rows[k]) for k in keys]  # type: ignore[index]
        st.stop("select+load_candidate_features")
        vs = dict(zip(keys, lf.verify_candidates(qf, feats), strict=True))
        st.stop("verify")
        chosen = set(keys)
        cands = [replace(c, verification=vs.get(c.product_key)) for c in cands]
        _ = [k for k, _ in rerank.combine_scores(cands, params) if k in chosen][:10]
        st.stop("combine")
        pool_sizes.append(len(cands))
        verified.append(len(keys))
        e = model.embed([q.image])
        top_k((e @ cat_emb.T)[0], 10)
        st.stop("search_by_image_total")
    before = ["boxes+crops", "embed_crops", "query_features", "box_aggregates"]
    after = ["knn_exact (HNSW in the service)", "select+load_candidate_features", "verify", "combine"]
    st.add("reverse_total", before + after)
    # the service extracts query features while the crops are embedded (two threads)
    for d in (st.wall, st.cpu):
        d["reverse_total_features_overlapping_embed"] = [
            t - min(e, f) for t, e, f in zip(d["reverse_total"], d["embed_crops"], d["query_features"], strict=True)
        ]
    out = st.report()
    out["n_crops_auto"] = n_crops
    out["pool_after_merge"] = {"p50": pct(pool_sizes, 50), "max": max(pool_sizes)}
    out["verified_per_query"] = {"p50": pct(verified, 50), "max": max(verified)}
    return out


# --------------------------------------------------------------------------- main


def _error_kind(q: WildQuery, catalog: Sequence[CatalogItem], truth: int, got: int) -> str:
    if got == truth:
        return "correct"
    if catalog[got].family == catalog[truth].family:
        return "look-alike (same family)"
    if catalog[got].id in q.params.get("other_product_ids", ()):
        return "another product in the photo"
    return "unrelated"


def _breakdown(
    queries: Sequence[WildQuery],
    catalog: Sequence[CatalogItem],
    truth: Sequence[int],
    sbi: Sequence[int | None],
    ranks: Sequence[int | None],
) -> dict[str, Any]:
    buckets: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        a = q.params["area_fraction"]
        buckets.setdefault(f"area {'<0.3' if a < 0.3 else '0.3-0.45' if a < 0.45 else '>=0.45'}", []).append(i)
        plain = catalog[truth[i]].metadata["pattern"] == "plain"
        buckets.setdefault("plain (low-texture) product" if plain else "patterned product", []).append(i)
        buckets.setdefault("occluded" if q.params["occluded_fraction"] > 0.05 else "unoccluded", []).append(i)
        buckets.setdefault(f"other products in photo: {q.params['other_products']}", []).append(i)
        for category in query_categories(q, catalog):
            buckets.setdefault(f"category: {category}", []).append(i)
    return {
        b: {"n": len(ix), "search_by_image": rank_metrics([sbi[i] for i in ix]),
            "reverse": rank_metrics([ranks[i] for i in ix])}
        for b, ix in sorted(buckets.items())
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=600)
    ap.add_argument("--queries", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default=None, help="default: efficientnet_b0@96,resnet18@112,vit_tiny@64")
    ap.add_argument("--sweep-models", default="vit_tiny@64", help="models the parameter sweeps run for")
    ap.add_argument("--latency-model", default=None, help="also time this model (default: dinov2_s14@224)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on a shared machine)")
    ap.add_argument("--low-texture", type=int, default=0, help="flat low-texture products added (own category)")
    ap.add_argument("--soft", type=float, default=0.0, help="fraction of motion-blurred / soft photos")
    ap.add_argument("--quick", action="store_true", help="smaller benchmark, one model, two query configs")
    ap.add_argument("--out", type=Path, default=Path("bench-results/offline_eval.json"))
    args = ap.parse_args()
    if args.quick:
        args.products, args.queries = 160, 48
    if args.models is None:
        args.models = "vit_tiny@64" if args.quick else "efficientnet_b0@96,resnet18@112,vit_tiny@64"
    if args.latency_model is None:
        args.latency_model = "" if args.quick else "dinov2_s14@224"
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    default = rerank.DEFAULT_PARAMS
    report: dict[str, Any] = {
        "label": "random-weight global models: quality is a LOWER BOUND; exact float32 kNN stands in for HNSW",
        "pipeline": "app.domain.reverse: embedding pool per embedded crop + aggregate pool per box, prior-based "
        "verify_top, final ranking over the verified set",
        "command": "python -m benchmarks.offline_eval "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("quick", "out")),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "blas_thread_env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "benchmark": {"products": args.products, "queries": args.queries, "seed": args.seed},
        "defaults": {
            "rerank": asdict(default),
            "verify": asdict(lf.DEFAULT_VERIFY),
            "catalog_features": {"max_keypoints": lf.CATALOG_MAX_KEYPOINTS, "max_side": lf.CATALOG_MAX_SIDE},
            "query_features": {"max_keypoints": DEFAULT_QUERY_CONFIG[0], "max_side": DEFAULT_QUERY_CONFIG[1]},
            "crop_order": list(crops_mod.DEFAULT_ORDER),
            "aggregate_version": aggregate.aggregate_version(),
        },
    }
    t0 = time.perf_counter()
    catalog, queries = generate_benchmark(
        args.products, args.queries, args.seed, low_texture=args.low_texture, soft=args.soft
    )
    report["benchmark"]["generate_s"] = round(time.perf_counter() - t0, 1)
    report["benchmark"]["families"] = len({c.family for c in catalog})
    index = {c.id: i for i, c in enumerate(catalog)}
    truth = [index[q.product_id] for q in queries]
    print(f"benchmark: {len(catalog)} products, {len(queries)} queries ({report['benchmark']['generate_s']}s)")

    # ---- catalog features + aggregates (as stored at ingest), query boxes
    t0 = time.perf_counter()
    cat_feats = [lf.extract_catalog_features(c.image) for c in catalog]
    t1 = time.perf_counter()
    cat_agg = CatalogAggregates.of(cat_feats)
    t2 = time.perf_counter()
    counts = [len(f) for f in cat_feats]
    boxes = [crops_mod.query_boxes(q.image) for q in queries]
    t3 = time.perf_counter()
    feat_info: dict[str, Any] = {
        "catalog": {
            "ms_per_image": round((t1 - t0) / len(catalog) * 1000, 1),
            "aggregate_ms_per_image": round((t2 - t1) / len(catalog) * 1000, 1),
            "keypoints_p10_p50_p90": [pct(counts, 10), pct(counts, 50), pct(counts, 90)],
            "with_aggregate": int(cat_agg.present.sum()),
        },
        "query_boxes": {
            "ms_per_image": round((t3 - t2) / len(queries) * 1000, 1),
            "boxes_mean": round(statistics.fmean(len(b) for b in boxes), 2),
        },
    }

    # ---- query features per config: extraction, box aggregates, verification of every pair
    qcfgs = list(dict.fromkeys(QUERY_CONFIGS[:1] + QUERY_CONFIGS[-1:] if args.quick else QUERY_CONFIGS))
    qfs: dict[tuple[int, int], QueryFeatures] = {}
    for cfg in qcfgs:
        t0 = time.perf_counter()
        qfs[cfg] = query_features(queries, boxes, cfg, cat_feats, cat_agg)
        feat_info[f"query{cfg}"] = qfs[cfg].info
        print(f"query features {cfg}: {qfs[cfg].info} ({time.perf_counter() - t0:.0f}s)")
    report["local_features"] = feat_info
    dq = qfs[DEFAULT_QUERY_CONFIG]
    dver = dq.verifications

    # verification alone, pool = whole catalog: what a perfect retrieval could at best give
    vonly = []
    for qi, t in enumerate(truth):
        inl = np.array([v.inliers for v in dver[qi]])
        vonly.append(int((inl > inl[t]).sum()) if inl[t] > 0 else None)
    report["verification_only_whole_catalog"] = rank_metrics(vonly)
    # aggregate retrieval alone (best box per product): how well the model-independent signal ranks
    agg_ranks = []
    for qi, t in enumerate(truth):
        s = dq.agg_sims[qi].max(axis=0) if len(dq.agg_sims[qi]) else np.full(len(catalog), -np.inf)
        agg_ranks.append(int((s > s[t]).sum()) if np.isfinite(s[t]) else None)
    report["aggregate_only_whole_catalog"] = {
        **rank_metrics(agg_ranks),
        "recall@20": round(sum(r is not None and r < 20 for r in agg_ranks) / len(truth), 4),
        "recall@40": round(sum(r is not None and r < 40 for r in agg_ranks) / len(truth), 4),
    }
    # chance verification: colour-weighted inliers of products that are NOT in the photo
    # (other family, not pasted as clutter) -- the evidence for min_inliers
    pair_chance, max_chance, true_eff = [], [], []
    for qi, q in enumerate(queries):
        t = truth[qi]
        others = set(q.params.get("other_product_ids", ()))
        eff = [
            v.effective_inliers
            for k, v in enumerate(dver[qi])
            if catalog[k].family != catalog[t].family and catalog[k].id not in others
        ]
        pair_chance += eff
        max_chance.append(max(eff))
        true_eff.append(dver[qi][t].effective_inliers)
    report["chance_effective_inliers"] = {
        "per_pair_p99_p999_max": [pct(pair_chance, 99), pct(pair_chance, 99.9), max(pair_chance)],
        "max_over_catalog_per_query_p50_p90": [pct(max_chance, 50), pct(max_chance, 90)],
        "true_product_p10_p25_p50_p75": [pct(true_eff, 10), pct(true_eff, 25), pct(true_eff, 50), pct(true_eff, 75)],
    }
    print("aggregate only:", report["aggregate_only_whole_catalog"])
    print("chance inliers:", report["chance_effective_inliers"])

    # ---- per global model: defaults; sweeps for the sweep models
    sweep_models = {m for m in args.sweep_models.split(",") if m}
    report["models"] = {}
    sweep: list[dict[str, Any]] = []
    latency_inputs: dict[str, ModelRun] = {}
    has_agg = cat_agg.present
    for name in [m for m in args.models.split(",") if m]:
        t0 = time.perf_counter()
        run = embed_model(MODELS[name], catalog, queries, boxes, truth)
        latency_inputs[name] = run
        info = run.info
        sbi = info.pop("_sbi_ranks")
        ranks: list[int | None] = []
        top1: list[int] = []
        info["reverse_default"] = evaluate(run.emb_sims, dq, truth, has_agg, default, ranks_out=ranks, top1_out=top1)
        r1_gain = info["reverse_default"]["recall@1"] - info["search_by_image"]["recall@1"]
        info["reverse_minus_search_by_image_recall@1"] = round(r1_gain, 4)
        info["reverse_without_verification"] = evaluate(run.emb_sims, dq, truth, has_agg, default, verify=False)
        info["reverse_embedding_pool_only"] = evaluate(
            run.emb_sims, dq, truth, has_agg, replace(default, aggregate_pool=0)
        )
        auto = rerank.crops_for_model(info["single_image_ms_here"], default)
        info["n_crops_auto_here"] = auto
        if auto != default.n_crops:
            info["reverse_auto_crops"] = evaluate(run.emb_sims, dq, truth, has_agg, replace(default, n_crops=auto))
        errors: dict[str, int] = {}
        for qi, got in enumerate(top1):
            kind = _error_kind(queries[qi], catalog, truth[qi], got)
            errors[kind] = errors.get(kind, 0) + 1
        info["reverse_top1_outcomes"] = errors
        info["breakdown"] = _breakdown(queries, catalog, truth, sbi, ranks)
        if name in sweep_models:
            t1 = time.perf_counter()
            sweep += run_sweeps(name, run, qfs, truth, has_agg)
            info["sweep_s"] = round(time.perf_counter() - t1, 1)
        info["eval_s"] = round(time.perf_counter() - t0, 1)
        report["models"][name] = info
        print(
            f"[{name}] search by image {info['search_by_image']}\n  reverse {info['reverse_default']}\n"
            f"  without verification {info['reverse_without_verification']}\n"
            f"  embedding pool only {info['reverse_embedding_pool_only']}\n  top-1: {errors}"
        )
    report["sweep_note"] = (
        "one parameter of rerank.RerankParams at a time (others at the defaults), plus two joint grids; "
        f"sweeps for {sorted(sweep_models)} only. The query_features sweep re-extracts the query features and "
        "re-verifies every pair per config; its configs are model-independent but evaluated for those models only."
    )
    report["sweep_best"] = best_rows(sweep)
    report["sweep"] = sweep

    # ---- latency at the defaults, stored features deserialised as the service would
    cat_rows = [lf.serialize(f) for f in cat_feats]
    n_lat = min(len(queries), 30 if args.quick else 100)
    report["latency"] = {"queries": n_lat, "load_average_before": os.getloadavg()}
    lat_models = {k: (r.model, r.cat_emb) for k, r in latency_inputs.items()}
    if args.latency_model and args.latency_model not in lat_models:
        m = GlobalModel(MODELS[args.latency_model])
        lat_models[args.latency_model] = (m, embed_many(m, [c.image for c in catalog]))
    for name, (model, cat_emb) in lat_models.items():
        model.embed([catalog[0].image])
        report["latency"][name] = latency_run(model, cat_emb, cat_rows, cat_agg, queries[:n_lat], default)
        print(f"latency [{name}]:", json.dumps(report["latency"][name]))
    report["latency"]["load_average_after"] = os.getloadavg()
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out} in {report['wall_s']}s")


if __name__ == "__main__":
    main()
