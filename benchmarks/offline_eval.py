"""Offline evaluation of reverse image search vs Search by Image (no database, no HTTP).

Generates a catalog with look-alike distractors and "in the wild" queries
(`benchmarks.wild`), embeds catalog images and query crops with a global model,
and compares

- Search by Image: one whole-image embedding, exact cosine kNN, top 10;
- reverse image search: query crops -> merged candidate pool (top-P per crop) ->
  local-feature verification (`app.vision.local_features`) -> combined score
  (`app.domain.rerank`), top 10;

reporting recall@1, recall@10 and MRR@10 for both, a sweep over crops, pool size,
score weights and keypoint budgets, and per-stage latency on this machine.

The global models have RANDOM weights (no downloads here): quality figures are a
lower bound for what pretrained weights give. Exact kNN in numpy stands in for the
HNSW query. Run:

    .venv/bin/python -m benchmarks.offline_eval                 # full run, ~10-15 min on 2 cores
    .venv/bin/python -m benchmarks.offline_eval --quick         # smoke run, ~2 min

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
from app.vision import crops as crops_mod
from app.vision import local_features as lf
from benchmarks.wild import CatalogItem, WildQuery, generate_benchmark

MODELS: dict[str, dict[str, Any]] = {
    # the project's offline test model (app.vision.model.OFFLINE_TEST_MODEL)
    "vit_tiny@64": {"name": "vit_tiny_patch16_224", "pretrained": False, "imageSize": 64, "seed": 0},
    "resnet18@112": {"name": "resnet18", "pretrained": False, "imageSize": 112, "seed": 0},
    # the default architecture; with random weights its outputs are nearly constant (LayerScale),
    # so it is here for latency, and its quality numbers mean little
    "efficientnet_b0@96": {"name": "efficientnet_b0", "pretrained": False, "imageSize": 96, "seed": 0},
    "dinov2_s14@224": {"name": "vit_small_patch14_dinov2", "pretrained": False, "imageSize": 224, "seed": 0},
}


# --------------------------------------------------------------------------- global model


class GlobalModel:
    """`app.vision.model.EmbeddingModel` when available, else timm directly (same preprocessing idea)."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        try:
            from app.vision.model import EmbeddingModel, ModelSpec

            self._model: Any = EmbeddingModel.load(ModelSpec.parse(spec), None)
            self._embed = self._model.embed
        except ImportError:  # pragma: no cover - only before app.vision.model existed
            import timm
            import timm.data

            torch.manual_seed(int(spec.get("seed", 0)))
            kwargs = {"img_size": spec["imageSize"]} if "vit" in spec["name"] else {}
            module = timm.create_model(spec["name"], pretrained=False, num_classes=0, **kwargs).eval()
            size = spec["imageSize"]
            cfg = timm.data.resolve_data_config({"input_size": (3, size, size), "crop_pct": 1.0}, model=module)
            tf = timm.data.create_transform(**cfg, is_training=False)

            def embed(images: Sequence[Any]) -> np.ndarray:
                with torch.inference_mode():
                    x = torch.stack([tf(im.convert("RGB")) for im in images])
                    f = torch.nn.functional.normalize(module(x).reshape(len(images), -1).float(), dim=1)
                return f.numpy()

            self._embed = embed

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        return np.asarray(self._embed(list(images)), np.float32)


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


# --------------------------------------------------------------------------- per-model evaluation


@dataclass
class QueryCache:
    crop_sims: dict[str, np.ndarray]  # crop kind -> (n_catalog,) cosines, for every kind in CROP_KINDS


def evaluate_model(
    name: str,
    spec: dict[str, Any],
    catalog: list[CatalogItem],
    queries: list[WildQuery],
) -> tuple[dict[str, Any], list[QueryCache], GlobalModel, np.ndarray]:
    t0 = time.perf_counter()
    model = GlobalModel(spec)
    load_s = time.perf_counter() - t0
    images = [c.image for c in catalog]
    model.embed(images[:4])  # warm-up
    t0 = time.perf_counter()
    cat_emb = embed_many(model, images)
    cat_s = time.perf_counter() - t0
    caches = []
    kinds = crops_mod.CROP_KINDS
    for q in queries:
        # every crop kind, duplicates included, so that any order / subset can be evaluated
        boxes = crops_mod.crop_boxes(q.image, kinds)
        emb = model.embed([q.image.crop(b) for b in boxes])
        caches.append(QueryCache(dict(zip(kinds, emb @ cat_emb.T, strict=True))))
    ids = [c.id for c in catalog]
    sbi_ranks: list[int | None] = []
    for q, c in zip(queries, caches, strict=True):
        order = np.argsort(-c.crop_sims["whole"], kind="stable")[:10]
        top = [ids[i] for i in order]
        sbi_ranks.append(top.index(q.product_id) if q.product_id in top else None)
    info = {
        "spec": spec,
        "dim": int(cat_emb.shape[1]),
        "load_s": round(load_s, 2),
        "catalog_embed_images_per_s": round(len(images) / cat_s, 1),
        "search_by_image": rank_metrics(sbi_ranks),
    }
    return info, caches, model, cat_emb


def pool_from_sims(rows: Sequence[np.ndarray], pool_size: int) -> dict[int, float]:
    """Union of each crop's top `pool_size` products, each with its best cosine over the crops."""
    per_crop = []
    for sims in rows:
        k = min(pool_size, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        per_crop.append([(int(i), float(sims[i])) for i in top])
    return rerank.merge_crop_neighbours(per_crop)  # type: ignore[return-value]


def pool_for(cache: QueryCache, kinds: Sequence[str], pool_size: int) -> dict[int, float]:
    return pool_from_sims([cache.crop_sims[k] for k in kinds], pool_size)


def reverse_ranks(
    caches: Sequence[QueryCache],
    truth: Sequence[int],
    verifications: Sequence[Sequence[lf.Verification]] | None,
    params: rerank.RerankParams,
    top1: list[int] | None = None,
    order: Sequence[str] = crops_mod.DEFAULT_ORDER,
) -> tuple[list[int | None], float, float]:
    """Ranks of the true product after re-ranking; also pool recall and mean merged pool size."""
    kinds = ["whole", *[k for k in order if k != "whole"]][: params.n_crops]
    ranks: list[int | None] = []
    in_pool = 0
    sizes = 0
    for qi, (cache, t) in enumerate(zip(caches, truth, strict=True)):
        pool = pool_for(cache, kinds, params.pool_size)
        in_pool += t in pool
        sizes += len(pool)
        # only the verify_top best by global score are verified (the latency budget)
        by_global = sorted(pool.items(), key=lambda kv: -kv[1])
        limit = params.verify_top or len(by_global)
        cands = [
            rerank.Candidate(k, g, verifications[qi][k] if verifications is not None and j < limit else None)
            for j, (k, g) in enumerate(by_global)
        ]
        ranked = rerank.combine_scores(cands, params)
        top = [k for k, _ in ranked[:10]]
        if top1 is not None:
            top1.append(int(top[0]))  # type: ignore[arg-type]
        ranks.append(top.index(t) if t in top else None)
    return ranks, in_pool / len(caches), sizes / len(caches)


def verify_all(
    query_feats: Sequence[lf.LocalFeatures],
    cat_feats: Sequence[lf.LocalFeatures],
    vparams: lf.VerifyParams = lf.DEFAULT_VERIFY,
) -> list[list[lf.Verification]]:
    """Every (query, catalog product) verification: pools of any model or size are then lookups.

    Verification of a candidate does not depend on the rest of the pool (the ratio
    test is inside each candidate), so this is exactly what any pool would compute.
    """
    return [lf.verify_candidates(qf, cat_feats, vparams) for qf in query_feats]


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
    queries: Sequence[WildQuery],
    params: rerank.RerankParams,
    qcfg: tuple[int, int],
) -> dict[str, Any]:
    """The whole reverse search per query, stage by stage, as the service would run it."""
    st = _Stages()
    pool_sizes, verified = [], []
    for q in queries:
        st.start()
        crops = crops_mod.query_crops(q.image, params.n_crops)
        st.stop("crops")
        emb = model.embed(crops)
        st.stop("embed_crops")
        pool = pool_from_sims(list(emb @ cat_emb.T), params.pool_size)
        st.stop("knn_exact (HNSW in the service)")
        qf = lf.extract_features(q.image, *qcfg)
        st.stop("query_features")
        keys = [k for k, _ in sorted(pool.items(), key=lambda kv: -kv[1])][: params.verify_top or None]
        feats = [lf.deserialize(cat_rows[k]) for k in keys]
        st.stop("load_candidate_features")
        vs = dict(zip(keys, lf.verify_candidates(qf, feats), strict=True))
        st.stop("verify")
        rerank.combine_scores([rerank.Candidate(k, g, vs.get(k)) for k, g in pool.items()], params)
        st.stop("combine")
        pool_sizes.append(len(pool))
        verified.append(len(keys))
        e = model.embed([q.image])
        np.argsort(-(e @ cat_emb.T)[0])[:10]
        st.stop("search_by_image_total")
    reverse = ["crops", "embed_crops", "knn_exact (HNSW in the service)", "query_features"]
    reverse += ["load_candidate_features", "verify", "combine"]
    st.add("reverse_total", reverse)
    st.add("crops+query_features+verify", ["crops", "query_features", "verify"])
    out = st.report()
    out["pool_after_merge"] = {"p50": pct(pool_sizes, 50), "max": max(pool_sizes)}
    out["verified_per_query"] = {"p50": pct(verified, 50), "max": max(verified)}
    return out


# --------------------------------------------------------------------------- main


def _feature_configs(quick: bool) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(catalog configs, query configs) as (max_keypoints, max_side); the first of each is the default."""
    ccfgs = [(lf.CATALOG_MAX_KEYPOINTS, lf.CATALOG_MAX_SIDE), (128, 384), (256, 512), (384, 384)]
    qcfgs = [(lf.QUERY_MAX_KEYPOINTS, lf.QUERY_MAX_SIDE), (512, 512), (1024, 640)]
    if quick:
        ccfgs, qcfgs = ccfgs[:2], qcfgs[:1]
    return list(dict.fromkeys(ccfgs)), list(dict.fromkeys(qcfgs))


def _error_kind(q: WildQuery, catalog: Sequence[CatalogItem], truth: int, got: int) -> str:
    if got == truth:
        return "correct"
    if catalog[got].family == catalog[truth].family:
        return "look-alike (same family)"
    if catalog[got].id in q.params.get("other_product_ids", ()):
        return "another product in the photo"
    return "unrelated"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=600)
    ap.add_argument("--queries", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="efficientnet_b0@96,resnet18@112,vit_tiny@64")
    ap.add_argument("--latency-model", default="dinov2_s14@224", help="also time the default architecture")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on a shared machine)")
    ap.add_argument("--quick", action="store_true", help="smaller benchmark and sweep (smoke test)")
    ap.add_argument("--out", type=Path, default=Path("bench-results/offline_eval.json"))
    args = ap.parse_args()
    if args.quick:
        args.products, args.queries = 200, 60
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "label": "random-weight global models: quality is a LOWER BOUND; exact kNN stands in for HNSW",
        "command": "python -m benchmarks.offline_eval "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("quick", "out")),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "benchmark": {"products": args.products, "queries": args.queries, "seed": args.seed},
    }
    t0 = time.perf_counter()
    catalog, queries = generate_benchmark(args.products, args.queries, args.seed)
    report["benchmark"]["generate_s"] = round(time.perf_counter() - t0, 1)
    report["benchmark"]["families"] = len({c.family for c in catalog})
    index = {c.id: i for i, c in enumerate(catalog)}
    truth = [index[q.product_id] for q in queries]
    print(f"benchmark: {len(catalog)} products, {len(queries)} queries ({report['benchmark']['generate_s']}s)")

    # ---- local features at a few budgets; verification of every (query, product) pair
    ccfgs, qcfgs = _feature_configs(args.quick)
    dc, dq = ccfgs[0], qcfgs[0]
    cat_feats: dict[tuple[int, int], list[lf.LocalFeatures]] = {}
    query_feats: dict[tuple[int, int], list[lf.LocalFeatures]] = {}
    feat_info: dict[str, Any] = {}
    for cfg in ccfgs:
        t0 = time.perf_counter()
        cat_feats[cfg] = [lf.extract_features(c.image, *cfg) for c in catalog]
        counts = [len(f) for f in cat_feats[cfg]]
        feat_info[f"catalog{cfg}"] = {
            "ms_per_image": round((time.perf_counter() - t0) / len(catalog) * 1000, 1),
            "keypoints_p10_p50_p90": [pct(counts, 10), pct(counts, 50), pct(counts, 90)],
            "stored_bytes_p50": pct([len(f) * (8 + lf.DESCRIPTOR_DIM) for f in cat_feats[cfg]], 50),
        }
    for cfg in qcfgs:
        t0 = time.perf_counter()
        query_feats[cfg] = [lf.extract_features(q.image, *cfg) for q in queries]
        counts = [len(f) for f in query_feats[cfg]]
        feat_info[f"query{cfg}"] = {
            "ms_per_image": round((time.perf_counter() - t0) / len(queries) * 1000, 1),
            "keypoints_p10_p50_p90": [pct(counts, 10), pct(counts, 50), pct(counts, 90)],
        }
    report["local_features"] = feat_info
    print("local features:", json.dumps(feat_info))
    ver: dict[tuple[tuple[int, int], tuple[int, int]], list[list[lf.Verification]]] = {}
    for qc, cc in [(dq, dc)] + [(dq, c) for c in ccfgs[1:]] + [(q, dc) for q in qcfgs[1:]]:
        t0 = time.perf_counter()
        ver[(qc, cc)] = verify_all(query_feats[qc], cat_feats[cc])
        print(f"verified query{qc} x catalog{cc}: {time.perf_counter() - t0:.0f}s")
    dver = ver[(dq, dc)]
    # verification alone, pool = whole catalog: what a perfect global model could at best add
    vonly = []
    for qi, t in enumerate(truth):
        inl = np.array([v.inliers for v in dver[qi]])
        vonly.append(int((inl > inl[t]).sum()) if inl[t] > 0 else None)
    report["verification_only_whole_catalog"] = rank_metrics(vonly)
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
    print("chance inliers:", report["chance_effective_inliers"])

    # ---- per global model
    default = rerank.DEFAULT_PARAMS
    crop_counts = [1, 2, 3, 4, 5]
    pool_sizes = [10, 30, 60, 100, 200] if not args.quick else [30, 60, 100]
    verify_tops = [50, 100, 150, 0]
    weights = [0.25, 0.5, 1.0, 2.0, 4.0]
    min_inliers = [4, 6, 8, 10, 12, 15]
    saturations = [4.0, 8.0, 16.0, 32.0]
    report["models"] = {}
    sweep: list[dict[str, Any]] = []
    latency_inputs: dict[str, tuple[GlobalModel, np.ndarray]] = {}
    for name in [m for m in args.models.split(",") if m]:
        t0 = time.perf_counter()
        info, caches, model, cat_emb = evaluate_model(name, MODELS[name], catalog, queries)
        latency_inputs[name] = (model, cat_emb)
        top1: list[int] = []
        ranks, in_pool, size = reverse_ranks(caches, truth, dver, default, top1)
        info["reverse_default"] = {**rank_metrics(ranks), "pool_recall": round(in_pool, 4), "pool_mean": size}
        r1_gain = info["reverse_default"]["recall@1"] - info["search_by_image"]["recall@1"]
        info["reverse_minus_search_by_image_recall@1"] = round(r1_gain, 4)
        ranks_nv, _, _ = reverse_ranks(caches, truth, None, default)
        info["crops_pool_without_verification"] = rank_metrics(ranks_nv)
        errors: dict[str, int] = {}
        for qi, got in enumerate(top1):
            kind = _error_kind(queries[qi], catalog, truth[qi], got)
            errors[kind] = errors.get(kind, 0) + 1
        info["reverse_top1_outcomes"] = errors
        for n_crops, pool, vtop in itertools.product(crop_counts, pool_sizes, verify_tops):
            p = replace(default, n_crops=n_crops, pool_size=pool, verify_top=vtop)
            r, ip, sz = reverse_ranks(caches, truth, dver, p)
            sweep.append(
                {"model": name, "sweep": "crops_pool", "n_crops": n_crops, "pool_size": pool, "verify_top": vtop,
                 **rank_metrics(r), "pool_recall": round(ip, 4), "pool_mean": round(sz, 1)}
            )  # fmt: skip
        # which crops: every subset that starts with the whole image, at the default pool size
        others = [k for k in crops_mod.CROP_KINDS if k != "whole"]
        for n in range(1, len(others) + 1):
            for subset in itertools.combinations(others, n - 1):
                p = replace(default, n_crops=n, verify_top=0)
                r, ip, sz = reverse_ranks(caches, truth, dver, p, order=("whole", *subset))
                sweep.append(
                    {"model": name, "sweep": "crop_kinds", "crops": ["whole", *subset], "pool_size": p.pool_size,
                     **rank_metrics(r), "pool_recall": round(ip, 4), "pool_mean": round(sz, 1)}
                )  # fmt: skip
        for w, mi, sat in itertools.product(weights, min_inliers, saturations):
            p = replace(default, verify_weight=w, min_inliers=mi, inlier_saturation=sat)
            r, _, _ = reverse_ranks(caches, truth, dver, p)
            sweep.append(
                {"model": name, "sweep": "weights", "verify_weight": w, "min_inliers": mi,
                 "inlier_saturation": sat, **rank_metrics(r)}
            )  # fmt: skip
        for (qc, cc), v in ver.items():
            r, _, _ = reverse_ranks(caches, truth, v, default)
            sweep.append({"model": name, "sweep": "features", "query": qc, "catalog": cc, **rank_metrics(r)})
        sbi = []
        for q, c in zip(queries, caches, strict=True):
            order = [catalog[i].id for i in np.argsort(-c.crop_sims["whole"], kind="stable")[:10]]
            sbi.append(order.index(q.product_id) if q.product_id in order else None)
        buckets: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            a = q.params["area_fraction"]
            buckets.setdefault(f"area {'<0.3' if a < 0.3 else '0.3-0.45' if a < 0.45 else '>=0.45'}", []).append(i)
            plain = catalog[truth[i]].metadata["pattern"] == "plain"
            buckets.setdefault("plain (low-texture) product" if plain else "patterned product", []).append(i)
            buckets.setdefault("occluded" if q.params["occluded_fraction"] > 0.05 else "unoccluded", []).append(i)
            buckets.setdefault(f"other products in photo: {q.params['other_products']}", []).append(i)
        info["breakdown"] = {
            b: {"n": len(ix), "search_by_image": rank_metrics([sbi[i] for i in ix]),
                "reverse": rank_metrics([ranks[i] for i in ix])}
            for b, ix in sorted(buckets.items())
        }  # fmt: skip
        info["eval_s"] = round(time.perf_counter() - t0, 1)
        report["models"][name] = info
        print(
            f"[{name}] search by image {info['search_by_image']}\n  reverse {info['reverse_default']}\n"
            f"  crops+pool, no verification {info['crops_pool_without_verification']}\n  top-1: {errors}"
        )
    report["sweep"] = sweep
    report["defaults"] = {
        "rerank": asdict(default),
        "verify": asdict(lf.DEFAULT_VERIFY),
        "catalog_features": {"max_keypoints": dc[0], "max_side": dc[1]},
        "query_features": {"max_keypoints": dq[0], "max_side": dq[1]},
        "crop_order": list(crops_mod.DEFAULT_ORDER),
    }

    # ---- latency at the defaults, stored features deserialised as the service would
    cat_rows = [lf.serialize(f) for f in cat_feats[dc]]
    n_lat = min(len(queries), 40 if args.quick else 100)
    report["latency"] = {"queries": n_lat, "load_average_before": os.getloadavg()}
    lat_models = dict(latency_inputs)
    if args.latency_model and args.latency_model not in lat_models:
        m = GlobalModel(MODELS[args.latency_model])
        lat_models[args.latency_model] = (m, embed_many(m, [c.image for c in catalog]))
    for name, (model, cat_emb) in lat_models.items():
        model.embed([catalog[0].image])
        report["latency"][name] = latency_run(model, cat_emb, cat_rows, queries[:n_lat], default, dq)
        print(f"latency [{name}]:", json.dumps(report["latency"][name]))
    report["latency"]["load_average_after"] = os.getloadavg()
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out} in {report['wall_s']}s")


if __name__ == "__main__":
    main()
