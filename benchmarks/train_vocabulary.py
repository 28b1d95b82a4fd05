"""Train the fixed local-feature vocabulary of `app.vision.aggregate` (VLAD words + whitened PCA).

    pip download --no-deps scikit-image==0.26.0 -d /tmp/skw
    (cd /tmp/skw && unzip -o -q scikit_image-*.whl 'skimage/data/*')
    python -m benchmarks.train_vocabulary --natural /tmp/skw/skimage/data

Training data, chosen so that the vocabulary describes photographs in general and
not this repo's benchmark generator:

- natural photographs: every image of at least 200 px in `--natural` (scikit-image's
  sample images: people, animals, street, rocket, coffee, text pages, textures...)
  plus matplotlib's sample photo, each at three analysis sizes;
- synthetic product renders from `app.samples.wild` with a seed (11) that no benchmark
  uses, catalog photos and in-the-wild queries.

The 64 words are k-means over an equal number of descriptors from each source; the
projection is PCA of VLAD vectors of random square crops of the natural photos and
of the synthetic images (crops are what queries send), whitened and truncated to
`AGGREGATE_DIM`. `--natural-only` leaves the synthetic images out entirely, for the
comparison `--evaluate` prints (candidate recall on a seed-0 wild benchmark).
Writes app/vision/data/rootsift_vlad64_pca512.npz (projection stored as float16).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from app.vision import aggregate
from app.vision import local_features as lf

WORDS = 64
SEED = 11
OUT = Path(__file__).resolve().parent.parent / "app" / "vision" / "data" / aggregate.VOCABULARY_FILE


def natural_images(folder: Path) -> list[Image.Image]:
    paths = sorted([*folder.glob("*.png"), *folder.glob("*.jpg")])
    mpl = Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"
    images = []
    for p in [*paths, mpl]:
        if p.exists():
            im = Image.open(p)
            if min(im.size) >= 200:
                images.append(im.convert("RGB"))
    return images


def random_boxes(rng: np.random.Generator, w: int, h: int, n: int) -> list[tuple[float, float, float, float]]:
    out = []
    for _ in range(n):
        s = rng.uniform(0.35, 1.0) * min(w, h)
        x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
        out.append((x, y, x + s, y + s))
    return out


def inside(f: lf.LocalFeatures, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    kp = f.keypoints
    m = (kp[:, 0] >= x0) & (kp[:, 0] < x1) & (kp[:, 1] >= y0) & (kp[:, 1] < y1)
    return lf.dequantised_descriptors(f)[m]


def train(natural: list[lf.LocalFeatures], synthetic: list[lf.LocalFeatures]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    nat = np.concatenate([lf.dequantised_descriptors(f) for f in natural])
    parts = [nat]
    if synthetic:
        syn = np.concatenate([lf.dequantised_descriptors(f) for f in synthetic])
        parts.append(syn[rng.choice(len(syn), min(len(syn), len(nat)), replace=False)])
    sample = np.concatenate(parts).astype(np.float32)
    cv2.setRNGSeed(SEED)
    criteria = (cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS, 40, 1e-5)
    _, _, centroids = cv2.kmeans(sample, WORDS, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    identity = aggregate.Vocabulary(
        centroids,
        np.zeros(centroids.size, np.float32),
        np.zeros((aggregate.AGGREGATE_DIM, centroids.size), np.float32),
        "training",
    )
    vlads = []
    for f in natural:
        vlads += [identity.vlad(inside(f, b)) for b in random_boxes(rng, f.image_width, f.image_height, 40)]
    for f in synthetic:
        vlads.append(identity.vlad(lf.dequantised_descriptors(f)))
        vlads += [identity.vlad(inside(f, b)) for b in random_boxes(rng, f.image_width, f.image_height, 2)]
    t = np.stack(vlads)
    mean = t.mean(axis=0)
    _, s, vt = np.linalg.svd(t - mean, full_matrices=False)
    eig = s**2 / len(t)
    dim = aggregate.AGGREGATE_DIM
    # whitening, with a floor so that near-empty directions are not blown up into noise
    projection = vt[:dim] / np.sqrt(eig[:dim] + 1e-3 * eig[0])[:, None]
    return {"centroids": centroids, "mean": mean.astype(np.float32), "projection": projection.astype(np.float16)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--natural", type=Path, required=True, help="folder of natural photographs")
    ap.add_argument("--natural-only", action="store_true")
    ap.add_argument("--products", type=int, default=1200)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    started = time.perf_counter()
    natural = []
    for im in natural_images(args.natural):
        for side, keypoints in ((384, 256), (512, 768), (1024, 1024)):
            natural.append(lf.extract_features(im, keypoints, side))
    synthetic: list[lf.LocalFeatures] = []
    if not args.natural_only:
        from app.samples.wild import generate_benchmark

        catalog, queries = generate_benchmark(args.products, args.queries, SEED)
        synthetic = [lf.extract_catalog_features(c.image) for c in catalog]
        synthetic += [lf.extract_query_features(q.image) for q in queries]
    arrays = train(natural, synthetic)
    digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays.values())).hexdigest()[:12]
    meta = {
        "version": f"vlad{WORDS}-pca{aggregate.AGGREGATE_DIM}-{digest}",
        "natural_images": len(natural) // 3,
        "synthetic_images": len(synthetic),
        "seed": SEED,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, meta=np.array(json.dumps(meta)), **arrays)
    print(json.dumps({**meta, "out": str(args.out), "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
