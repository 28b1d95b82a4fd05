"""`lookalike worker`: embeds queued products (LOOKALIKE_INGEST_MODE=queue) and runs the feature backfill.

Any number of workers, on any host with the model, share the queue through PostgreSQL.
One batch goes through clear steps (each its own function):

1. `claim`: up to `batch_size` pending products, `FOR UPDATE SKIP LOCKED`, under a lease;
2. `load_images`: fetch (the same SSRF-safe fetcher and allow-list as the service) and decode;
   an image that cannot be had marks its product failed with the reason;
3. `compute`: reuse the stored embedding of identical image bytes, embed the rest, extract
   local features where the index has reverse image search on (steps 2 and 3 run per group of
   the model's measured pass size, overlapping: a group is embedded while the next loads);
4. `store`: embeddings, features and 'ready' in one transaction, only while the claim holds.

A worker that cannot load an index's model (no weights on this host) gives its claim back
and stops with the same message the service gives (`ModelUnavailableError`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field

import asyncpg
import numpy as np
from PIL import Image

from app.domain import inference
from app.domain.backfill import FeatureBackfill
from app.domain.ingest import MIN_GROUP
from app.errors import ImageError
from app.storage import indexes, products, queue
from app.storage.indexes import IndexRecord
from app.storage.queue import EmbeddingResult, QueuedProduct
from app.vision.model import ModelSpec
from app.vision.service import LoadedImage, VisionService

log = logging.getLogger("lookalike.worker")


@dataclass
class WorkerStats:
    batches: int = 0
    claimed: int = 0
    embedded: int = 0
    failed: int = 0
    lost: int = 0  # results not stored: the product was replaced or re-claimed meanwhile
    features: int = 0  # backfilled local features
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.embedded / max(time.monotonic() - self.started, 1e-9)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class EmbeddingWorker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        vision: VisionService,
        *,
        batch_size: int,
        lease_s: float,
        max_attempts: int,
        fetch_concurrency: int,
        name: str | None = None,
    ) -> None:
        self.pool = pool
        self.vision = vision
        self.batch_size = max(1, batch_size)
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.name = name or worker_name()
        self.stats = WorkerStats()
        self.backfill = FeatureBackfill(pool, vision)
        self._fetch_slots = asyncio.Semaphore(max(1, fetch_concurrency))
        self._batch_number = 0

    async def check_models(self) -> None:
        """Load the model of every index with queued work now: no weights -> ModelUnavailableError at start."""
        for index_pk in await queue.pending_indexes(self.pool):
            record = await indexes.get_index_by_pk(self.pool, index_pk)
            if record is not None:
                await self.vision.load_model(ModelSpec.parse(record.model))

    async def run(self, *, poll_interval_s: float, once: bool = False, max_idle_s: float | None = None) -> WorkerStats:
        """Work until stopped; `once`: until the queue is empty; `max_idle_s`: until idle that long."""
        idle_since = time.monotonic()
        while True:
            try:
                done = await self.run_batch()
                backfilled = await self.backfill.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # the database restarting or failing over: the claim went back (or its lease will lapse)
                log.warning("worker %s paused by a database error (%s); retrying", self.name, exc.__class__.__name__)
                await asyncio.sleep(max(poll_interval_s, 1.0))
                continue
            self.stats.features += backfilled
            done += backfilled
            if done:
                idle_since = time.monotonic()
                continue
            if once or (max_idle_s is not None and time.monotonic() - idle_since >= max_idle_s):
                return self.stats
            await asyncio.sleep(poll_interval_s)

    async def run_batch(self) -> int:
        """Claim and process one batch; returns how many products it claimed."""
        self._batch_number += 1
        claim = f"{self.name}#{self._batch_number}"
        async with self.pool.acquire() as conn:
            batch = await queue.claim_batch(conn, claim, self.batch_size, self.lease_s, self.max_attempts)
        if not batch:
            return 0
        started = time.monotonic()
        before = (self.stats.embedded, self.stats.failed, self.stats.lost)
        try:
            for index_pk, items in queue.group_by_index(batch).items():
                record = await indexes.get_index_by_pk(self.pool, index_pk)
                if record is None:  # the index was deleted after the claim (its products are gone)
                    continue
                await self.process(record, claim, items)
        except BaseException:
            # No weights here, a database outage, a stop: what was not stored goes back to the queue
            # at once rather than after the lease.
            try:
                await queue.release_claim(self.pool, claim)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("could not give claim %s back; its lease (%.0f s) will", claim, self.lease_s)
            raise
        self.stats.batches += 1
        self.stats.claimed += len(batch)
        embedded, failed, lost = (now - then for now, then in zip(
            (self.stats.embedded, self.stats.failed, self.stats.lost), before, strict=True))
        log.info(
            "batch %s: claimed %d, embedded %d, failed %d, lost %d in %.2f s (%.1f products/s overall, %d so far)",
            claim, len(batch), embedded, failed, lost, time.monotonic() - started, self.stats.rate(),
            self.stats.embedded,
        )
        return len(batch)

    async def process(self, index: IndexRecord, claim: str, items: list[QueuedProduct]) -> None:
        """Load and compute in groups that overlap (as inline ingest does: each group goes to inference
        as soon as its images are in), then store the whole claim in one transaction."""
        spec = ModelSpec.parse(index.model)
        group = max(MIN_GROUP, await self.vision.ingest_batch_size(spec, inference.precision_of(index, self.vision)))
        fresh: list[tuple[Image.Image, np.ndarray]] = []

        async def load_and_compute(part: list[QueuedProduct]) -> list[EmbeddingResult]:
            loaded = await self.load_images(index, claim, part)
            return await self.compute(index, loaded, fresh) if loaded else []

        parts = await asyncio.gather(
            *(load_and_compute(items[i : i + group]) for i in range(0, len(items), group)), return_exceptions=True
        )
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        if fresh:
            images, vectors = [image for image, _ in fresh], np.stack([vector for _, vector in fresh])
            await inference.guard_after_ingest(self.pool, self.vision, index, images, vectors)
        results = [result for part in parts if not isinstance(part, BaseException) for result in part]
        if results:
            await self.store(index, claim, results)

    async def load_images(
        self, index: IndexRecord, claim: str, items: list[QueuedProduct]
    ) -> list[tuple[QueuedProduct, LoadedImage]]:
        outcomes = await asyncio.gather(*(self._load(item.image_url) for item in items), return_exceptions=True)
        loaded: list[tuple[QueuedProduct, LoadedImage]] = []
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, ImageError):
                # the same message an inline add-documents item would have carried
                if await queue.fail(self.pool, claim, item.product_pk, f"variantImageUrl: {outcome.message}"):
                    self.stats.failed += 1
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                loaded.append((item, outcome))
        return loaded

    async def _load(self, url: str) -> LoadedImage:
        async with self._fetch_slots:
            return await self.vision.load(url)

    async def compute(
        self,
        index: IndexRecord,
        loaded: list[tuple[QueuedProduct, LoadedImage]],
        fresh: list[tuple[Image.Image, np.ndarray]] | None = None,
    ) -> list[EmbeddingResult]:
        """Vectors (reused or embedded) and local features; appends what it embedded to `fresh`."""
        reusable = await products.reusable_images(self.pool, index, list({image.sha256 for _, image in loaded}))
        want_features = index.reverse_search_enabled
        results: dict[int, EmbeddingResult] = {}
        to_embed: list[tuple[QueuedProduct, LoadedImage]] = []
        for item, image in loaded:
            reuse = reusable.get(image.sha256)
            if reuse is not None and reuse.embedding.shape == (index.dimensions,):
                features = reuse.features if want_features else None
                results[item.product_pk] = EmbeddingResult(
                    item.product_pk, image.sha256, reuse.embedding, features, "ready" if features else None
                )
            else:
                to_embed.append((item, image))
        if to_embed:
            images = [image.image for _, image in to_embed]
            # the index's precision (its int8 guard's verdict), as inline ingest embeds
            vectors = await inference.embed_for_ingest(self.vision, index, images)
            for (item, image), vector in zip(to_embed, vectors, strict=True):
                results[item.product_pk] = EmbeddingResult(item.product_pk, image.sha256, vector, None, None)
            if fresh is not None:
                fresh.extend(zip(images, vectors, strict=True))
        if want_features:
            images = {item.product_pk: image for item, image in loaded}
            await asyncio.gather(
                *(self._features(result, images[pk]) for pk, result in results.items() if result.features is None)
            )
        return [results[item.product_pk] for item, _ in loaded]

    async def _features(self, result: EmbeddingResult, image: LoadedImage) -> None:
        try:
            result.features = await self.vision.catalog_features(image.image)
            result.features_status = "ready"
        except Exception as exc:  # feature extraction must never fail the product itself
            result.features_status = "failed"
            result.features_error = f"local features could not be extracted: {exc.__class__.__name__}"

    async def store(self, index: IndexRecord, claim: str, results: list[EmbeddingResult]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            stored = [await queue.finish(conn, index, claim, result) for result in results]
        self.stats.embedded += sum(stored)
        self.stats.lost += len(stored) - sum(stored)
