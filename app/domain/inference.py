"""Which precision an index's model runs at, and the int8 quality guard's decision.

The index settings carry `inference`: `{"backend", "precision", "guard"}`. A new index starts
at fp32 with the guard `pending`; the first ingest batch with at least
`guard.MIN_SAMPLE` new images runs the guard on them (up to `guard.MAX_SAMPLE`; only the int8
pass, their fp32 vectors are the ones ingest computed and stores) and stores its verdict and
numbers. An index
ingested in smaller batches gets its verdict from the local-feature backfill (the images
it decodes anyway, when reverse search is turned on). From then
on every embedding for that index (ingest, Search by Image, reverse image search) runs at
the stored precision. The guard is checked again on the index's stored images by the
backfill (its first batch of enough images per index and process) and by `lookalike
calibrate` (its sample); `recheck` repeats it and stores the new verdict, with where it
was checked (`checkedOn`: ingest, backfill or calibration).

The backend is a process setting (LOOKALIKE_INFERENCE_BACKEND); where it is torch, or
LOOKALIKE_INFERENCE_PRECISION=fp32, every index runs fp32 whatever was stored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import numpy as np
from PIL import Image

from app.storage import indexes
from app.storage.indexes import IndexRecord
from app.vision import guard
from app.vision.guard import GuardResult
from app.vision.model import EmbeddingModel, ModelSpec
from app.vision.service import VisionService

log = logging.getLogger("lookalike.inference")

_guard_locks: dict[int, asyncio.Lock] = {}


def initial_settings(vision: VisionService, model: EmbeddingModel | None = None) -> dict[str, Any]:
    """The `inference` settings of a new index (`model`: its loaded model, if known)."""
    if not vision.int8_allowed:
        why = "backend torch" if vision.backend != "onnx" else "LOOKALIKE_INFERENCE_PRECISION=fp32"
        return {"backend": vision.backend, "precision": "fp32", "guard": {"status": "off", "reason": why}}
    if model is not None and "int8" not in model.precisions:
        # on CUDA only the fp32 graph runs; a model the exporter could not take runs on torch
        why = "CUDA runs the fp32 graph only" if model.backend == "onnx" else "the model runs on torch (export failed)"
        return {"backend": vision.backend, "precision": "fp32", "guard": {"status": "off", "reason": why}}
    return {"backend": vision.backend, "precision": "fp32", "guard": {"status": "pending", "sample": 0}}


def stored_settings(index: IndexRecord) -> dict[str, Any]:
    stored = index.settings.get("inference")
    return dict(stored) if isinstance(stored, dict) else {"precision": "fp32", "guard": {"status": "pending"}}


def precision_of(index: IndexRecord, vision: VisionService) -> str:
    """The precision this process embeds the index's images and queries at."""
    if not vision.int8_allowed:
        return "fp32"
    return "int8" if stored_settings(index).get("precision") == "int8" else "fp32"


def effective(index: IndexRecord, vision: VisionService) -> dict[str, Any]:
    """What runs for this index in this process, with the stored guard numbers (for /stats)."""
    stored = stored_settings(index)
    out: dict[str, Any] = {"backend": vision.backend, "precision": precision_of(index, vision)}
    if "guard" in stored:
        out["guard"] = stored["guard"]
    model = vision.registry.loaded_model(ModelSpec.parse(index.model))
    if model is not None:
        out["providers"] = model.providers or (["torch:" + str(model.device)])
        if model.graphs is not None:
            out["graphKey"] = model.graphs.key
    return out


def _guard_pending(index: IndexRecord) -> bool:
    return stored_settings(index).get("guard", {}).get("status") == "pending"


async def store_verdict(
    pool: asyncpg.Pool, index: IndexRecord, vision: VisionService, result: GuardResult, checked_on: str
) -> IndexRecord:
    verdict = {**result.to_json(), "checkedOn": checked_on}
    inference = {"backend": vision.backend, "precision": result.precision, "guard": verdict}
    async with pool.acquire() as conn:
        record = await indexes.set_inference(conn, index.pk, inference)
    log.info(
        "index %s: int8 guard (%s) on %d images: cosine %.4f (min %.4f), top-%d overlap %.3f -> %s (%s)",
        index.name, checked_on, result.sample, result.cosine, result.cosine_min, result.neighbours,
        result.overlap, result.precision, result.reason,
    )  # fmt: skip
    return record


async def embed_for_ingest(vision: VisionService, index: IndexRecord, images: list[Image.Image]) -> np.ndarray:
    """Embeddings of new catalog images at the index's precision (fp32 while its guard is pending)."""
    return await vision.embed(ModelSpec.parse(index.model), images, precision_of(index, vision))


async def guard_after_ingest(
    pool: asyncpg.Pool, vision: VisionService, index: IndexRecord, images: list[Image.Image], fp32: np.ndarray
) -> None:
    """Decide a pending guard on an ingest call's new images (>= guard.MIN_SAMPLE of them).

    `fp32`: their embeddings, computed at fp32 (the precision of a pending index), so the guard
    only runs the int8 pass. They are stored as they are whatever the verdict: int8 is chosen
    only where it agrees with them.
    """
    if not vision.int8_allowed or not _guard_pending(index) or len(images) < guard.MIN_SAMPLE:
        return
    lock = _guard_locks.setdefault(index.pk, asyncio.Lock())
    async with lock:
        current = await indexes.get_index_by_pk(pool, index.pk)
        if current is None or not _guard_pending(current):  # a concurrent call decided it meanwhile
            return
        result = await vision.guard_int8(ModelSpec.parse(index.model), images, fp32)
        if result is not None:
            await store_verdict(pool, current, vision, result, "ingest")


async def warm_up(pool: asyncpg.Pool, vision: VisionService) -> None:
    """Load every index's model (exporting its graphs the first time) before requests need it."""
    try:
        records = await indexes.list_indexes(pool)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):  # requests report real DB errors
        log.warning("warm-up: could not list indexes", exc_info=True)
        return
    specs = []
    for record, _count in records:
        try:
            specs.append(ModelSpec.parse(record.model))
        except ValueError:
            continue
    await vision.warm_up(specs)


async def guard_from_stored(
    pool: asyncpg.Pool, vision: VisionService, index_pk: int, images: list[Image.Image], *, again: bool
) -> GuardResult | None:
    """The guard on stored products' images (the feature backfill's): if the index's verdict is still
    pending, or `again` (check a decided verdict once more on these images). None: not run.

    Vectors stored before a verdict stay as they are: a passed guard says the two precisions agree.
    A verdict that changes applies to what is embedded from then on (queries included).
    """
    if not vision.int8_allowed or len(images) < guard.MIN_SAMPLE:
        return None
    lock = _guard_locks.setdefault(index_pk, asyncio.Lock())
    async with lock:
        index = await indexes.get_index_by_pk(pool, index_pk)
        if index is None or not (again or _guard_pending(index)):
            return None
        return await recheck(pool, vision, index, images, "backfill")


async def recheck(
    pool: asyncpg.Pool, vision: VisionService, index: IndexRecord, images: list[Image.Image], checked_on: str
) -> GuardResult | None:
    """Run the guard again on stored product images and store the verdict (None: no int8 here)."""
    if len(images) < 2:
        return None
    result = await vision.guard_int8(ModelSpec.parse(index.model), images)
    if result is not None:
        await store_verdict(pool, index, vision, result, checked_on)
    return result
