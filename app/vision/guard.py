"""The int8 quality guard: does the quantised graph agree with fp32 on these images?

An index uses its model's int8 graph only where, on a sample of its own product images,
(a) the int8 embedding of every image points where the fp32 one does (mean cosine >=
`COSINE_MIN`), (b) the nearest neighbours within the sample are the same ones (mean top-10
overlap >= `OVERLAP_MIN`: the ranking a search would return), and (c) int8 is actually faster
here (measured single-image pass). Otherwise fp32. With random-weight models (tests,
offline benchmarks) int8 may well fail (b): that is reported, not hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.vision.model import EmbeddingModel

COSINE_MIN = 0.99
OVERLAP_MIN = 0.95
NEIGHBOURS = 10
MIN_SAMPLE = 16  # fewer images say nothing about top-10 neighbours: wait for a bigger batch
MAX_SAMPLE = 64


@dataclass(frozen=True)
class GuardResult:
    precision: str  # the verdict: "int8" or "fp32"
    reason: str
    sample: int
    cosine: float  # mean cosine(fp32, int8) over the sample
    cosine_min: float
    overlap: float  # mean share of each image's top-k neighbours (within the sample) kept by int8
    neighbours: int
    fp32_ms: float
    int8_ms: float
    fp32: np.ndarray  # the sample's embeddings at both precisions (callers reuse them)
    int8: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "passed" if self.precision == "int8" else "failed",
            "reason": self.reason,
            "sample": self.sample,
            "cosine": round(self.cosine, 5),
            "cosineMin": round(self.cosine_min, 5),
            "overlap": round(self.overlap, 4),
            "neighbours": self.neighbours,
            "thresholds": {"cosine": COSINE_MIN, "overlap": OVERLAP_MIN},
            "singleImageMs": {"fp32": round(self.fp32_ms, 2), "int8": round(self.int8_ms, 2)},
        }

    @property
    def vectors(self) -> np.ndarray:
        """The sample's embeddings at the chosen precision."""
        return self.int8 if self.precision == "int8" else self.fp32


def top_k_overlap(reference: np.ndarray, candidate: np.ndarray, k: int) -> float:
    """Mean over rows of |top-k neighbours by `reference` ∩ top-k by `candidate`| / k (self excluded)."""
    n = reference.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return 1.0

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]

    ref, cand = neighbours(reference), neighbours(candidate)
    return float(np.mean([len(set(r) & set(c)) / k for r, c in zip(ref, cand, strict=True)]))


def check(model: EmbeddingModel, batch: torch.Tensor, fp32: np.ndarray | None = None) -> GuardResult:
    """Compare the model's int8 and fp32 graphs on a preprocessed sample (CPU-bound: run it in a thread).

    `fp32`: the sample's fp32 embeddings if the caller computed them already (ingest did).
    """
    if fp32 is None:
        fp32 = model.embed_tensor(batch, "fp32")
    if "int8" not in model.precisions:
        raise ValueError(f"model {model.name} has no int8 graph (backend {model.backend})")
    int8 = model.embed_tensor(batch, "int8")
    cosines = np.sum(fp32 * int8, axis=1)
    overlap = top_k_overlap(fp32, int8, NEIGHBOURS)
    fp32_ms, int8_ms = model.single_image_ms("fp32"), model.single_image_ms("int8")
    cosine, cosine_min = float(cosines.mean()), float(cosines.min())
    failed = []
    if cosine < COSINE_MIN:
        failed.append(f"cosine {cosine:.4f} < {COSINE_MIN}")
    if overlap < OVERLAP_MIN:
        failed.append(f"top-{min(NEIGHBOURS, len(batch) - 1)} overlap {overlap:.3f} < {OVERLAP_MIN}")
    if int8_ms >= fp32_ms:
        failed.append(f"int8 not faster here ({int8_ms:.1f} ms vs fp32 {fp32_ms:.1f} ms)")
    return GuardResult(
        precision="fp32" if failed else "int8",
        reason="; ".join(failed) if failed else "int8 agrees with fp32 and is faster",
        sample=int(batch.shape[0]),
        cosine=cosine,
        cosine_min=cosine_min,
        overlap=overlap,
        neighbours=min(NEIGHBOURS, int(batch.shape[0]) - 1),
        fp32_ms=fp32_ms,
        int8_ms=int8_ms,
        fp32=fp32,
        int8=int8,
    )
