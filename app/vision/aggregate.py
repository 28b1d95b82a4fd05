"""A compact, model-independent descriptor of an image's local features, for candidate retrieval.

Reverse image search verifies candidates with local features, but it can only verify
what reaches the candidate pool. The global model's pool misses the product when the
model is weak (random weights, a domain it was not trained on) or the product is a
small part of a cluttered photo. This module aggregates an image's RootSIFT
descriptors into one vector (VLAD, Jegou et al. CVPR 2010, with the signed square
root and intra-normalisation of Arandjelovic & Zisserman CVPR 2013, then PCA
whitening, Jegou & Chum ECCV 2012) that pgvector indexes like any embedding:

- catalog images get one vector from their stored descriptors;
- a query gets one vector per crop box *for free* (the keypoints inside the box;
  no network forward pass), so a product at 15% of the frame still has a vector
  dominated by its own keypoints.

The vocabulary (64 visual words, the mean and the whitened projection to
AGGREGATE_DIM) is fixed and versioned, trained by `benchmarks/train_vocabulary.py`
on RootSIFT descriptors of natural photographs (scikit-image's sample images) and
synthetic product renders; a vocabulary trained on natural photos alone measured
within a few points of it (see that script). Changing the file changes
AGGREGATE_VERSION, and stored vectors of an older version must be recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import numpy as np

from app.vision.local_features import DESCRIPTOR_DIM, LocalFeatures, dequantised_descriptors

VOCABULARY_FILE = "rootsift_vlad64_pca512.npz"
AGGREGATE_DIM = 512

Box = tuple[float, float, float, float]  # left, top, right, bottom in the image's pixels


class Vocabulary:
    def __init__(self, centroids: np.ndarray, mean: np.ndarray, projection: np.ndarray, version: str):
        if centroids.shape[1] != DESCRIPTOR_DIM or mean.shape != (centroids.size,):
            raise ValueError("vocabulary centroids and mean do not match")
        if projection.shape != (AGGREGATE_DIM, centroids.size):
            raise ValueError(f"vocabulary projection must be {AGGREGATE_DIM} x {centroids.size}")
        self.centroids = np.ascontiguousarray(centroids, np.float32)
        self.mean = np.ascontiguousarray(mean, np.float32)
        self.projection_t = np.ascontiguousarray(projection.astype(np.float32).T)  # (k*128, dim)
        self.version = version

    @property
    def words(self) -> int:
        return int(self.centroids.shape[0])

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Nearest visual word of each unit-norm descriptor."""
        return np.argmax(descriptors @ self.centroids.T, axis=1)

    def vlad(self, descriptors: np.ndarray, words: np.ndarray | None = None) -> np.ndarray:
        """Raw VLAD (k*128,) of unit-norm descriptors: signed sqrt, per-word L2, global L2."""
        k = self.words
        if len(descriptors) == 0:
            return np.zeros(k * DESCRIPTOR_DIM, np.float32)
        words = self.assign(descriptors) if words is None else words
        onehot = np.zeros((len(descriptors), k), np.float32)
        onehot[np.arange(len(descriptors)), words] = 1.0
        # sum of residuals per word = sum of descriptors per word - count * centroid
        v = onehot.T @ descriptors - onehot.sum(axis=0)[:, None] * self.centroids
        v = np.sign(v) * np.sqrt(np.abs(v))
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
        flat = v.ravel()
        return flat / max(float(np.linalg.norm(flat)), 1e-9)

    def project(self, vlads: np.ndarray) -> np.ndarray:
        """Whitened PCA projection, L2-normalised rows (cosine similarity is then a dot product)."""
        y = (np.atleast_2d(vlads) - self.mean) @ self.projection_t
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-9)


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    with resources.files("app.vision.data").joinpath(VOCABULARY_FILE).open("rb") as f:
        data = np.load(f, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        return Vocabulary(data["centroids"], data["mean"], data["projection"], meta["version"])


def aggregate_version() -> str:
    return vocabulary().version


MIN_KEYPOINTS = 8  # fewer keypoints describe noise, not the image: no aggregate at all


def image_aggregate(features: LocalFeatures) -> np.ndarray | None:
    """The (AGGREGATE_DIM,) vector of all of an image's keypoints; None with fewer than MIN_KEYPOINTS."""
    if len(features) < MIN_KEYPOINTS:
        return None
    voc = vocabulary()
    return voc.project(voc.vlad(dequantised_descriptors(features)))[0]


def box_aggregates(features: LocalFeatures, boxes: Sequence[Box], min_keypoints: int = MIN_KEYPOINTS) -> np.ndarray:
    """One vector per box from the keypoints inside it, (n, AGGREGATE_DIM); boxes with fewer
    than `min_keypoints` keypoints (nothing to describe) are left out."""
    if len(features) == 0:
        return np.zeros((0, AGGREGATE_DIM), np.float32)
    voc = vocabulary()
    desc = dequantised_descriptors(features)
    words = voc.assign(desc)  # once for all boxes
    x, y = features.keypoints[:, 0], features.keypoints[:, 1]
    vlads = []
    for left, top, right, bottom in boxes:
        inside = (x >= left) & (x < right) & (y >= top) & (y < bottom)
        if int(inside.sum()) >= min_keypoints:
            vlads.append(voc.vlad(desc[inside], words[inside]))
    if not vlads:
        return np.zeros((0, AGGREGATE_DIM), np.float32)
    return voc.project(np.stack(vlads)).astype(np.float32)
