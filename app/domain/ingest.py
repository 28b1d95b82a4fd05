"""Adding and updating products: validate, fetch, decode, embed, extract features, store.

Each item succeeds or fails on its own; the batch's images are fetched concurrently,
decoded off the event loop, embedded in groups as they arrive (inference overlaps the
loading of the rest), and committed together.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.domain import inference
from app.domain.products import DocumentError, document_id, merge_partial, validate_document
from app.errors import ImageError
from app.filters import index_terms
from app.storage.catalog import CatalogStore
from app.storage.indexes import IndexRecord
from app.storage.products import ProductWrite
from app.vision.model import ModelSpec
from app.vision.service import LoadedImage, VisionService

log = logging.getLogger("lookalike.ingest")


@dataclass
class ItemResult:
    product_id: str | None
    status: int
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"_id": self.product_id, "status": self.status}
        if self.message is not None:
            out["message"] = self.message
        return out


@dataclass
class _Work:
    position: int
    doc: dict[str, Any]
    loaded: LoadedImage | None = None
    embedding: np.ndarray | None = None
    features: dict[str, Any] | None = None
    features_status: str | None = None
    features_error: str | None = None
    embed_error: str | None = None
    embedded_here: bool = False  # embedded by this call (not reused): the guard may sample it


# The smallest group of images the pipeline loads and embeds together (one reuse lookup each).
MIN_GROUP = 4
QUEUED_MESSAGE = "queued for embedding; searchable once a worker has embedded it"


class IngestPipeline:
    """Inline (default): fetch, embed and store before answering. Queue: store pending, answer 202."""

    def __init__(self, vision: VisionService, store: CatalogStore, fetch_concurrency: int, *, queue: bool = False):
        self.vision = vision
        self.store = store
        self.queue = queue
        self._fetch_slots = asyncio.Semaphore(max(1, fetch_concurrency))

    async def _load(self, url: str) -> LoadedImage:
        async with self._fetch_slots:
            return await self.vision.load(url)

    async def add_documents(self, index: IndexRecord, raw_docs: list[Any]) -> list[ItemResult]:
        results: list[ItemResult | None] = [None] * len(raw_docs)
        work: list[_Work] = []
        for position, raw in enumerate(raw_docs):
            try:
                work.append(_Work(position, validate_document(raw)))
            except DocumentError as exc:
                results[position] = ItemResult(document_id(raw), 400, str(exc))
        await self._process(index, work, results)
        return [r for r in results if r is not None]

    async def update_documents(self, index: IndexRecord, raw_patches: list[Any]) -> list[ItemResult]:
        results: list[ItemResult | None] = [None] * len(raw_patches)
        ids = [document_id(p) for p in raw_patches]
        # NUL cannot reach PostgreSQL text (a 500 found by fuzzing); such ids are refused per item below.
        states = await self.store.states(index, [i for i in ids if i is not None and "\x00" not in i])
        reembed: list[_Work] = []
        for position, patch in enumerate(raw_patches):
            product_id = ids[position]
            if product_id is None or not isinstance(patch, dict):
                results[position] = ItemResult(product_id, 400, "each update needs a string _id")
                continue
            if "\x00" in product_id:
                results[position] = ItemResult(product_id, 400, "_id must not contain NUL characters")
                continue
            if product_id not in states:
                results[position] = ItemResult(product_id, 404, f"document {product_id!r} not found")
                continue
            current, _digest = states[product_id]
            try:
                merged = merge_partial(current, patch)
            except DocumentError as exc:
                results[position] = ItemResult(product_id, 400, str(exc))
                continue
            if merged.get("variantImageUrl") != current.get("variantImageUrl"):
                reembed.append(_Work(position, merged))
                continue
            stored = await self.store.update_document_only(index, product_id, merged, index_terms(merged))
            results[position] = (
                ItemResult(product_id, 200) if stored else ItemResult(product_id, 404, "document not found")
            )
        await self._process(index, reembed, results)
        return [r for r in results if r is not None]

    async def _process(self, index: IndexRecord, work: list[_Work], results: list[ItemResult | None]) -> None:
        if not work:
            return
        if self.queue:
            await self._enqueue(index, work, results)
            return
        # A pipeline: the call's images are fetched and decoded concurrently, and each group of
        # them goes to inference as soon as its own images are in, while the later groups are
        # still loading (and preprocessing, in the CPU pool); the writes wait for all of them
        # (one transaction per call). Groups are the model's measured best pass size
        # (EmbeddingModel.best_batch_size), at least MIN_GROUP images for the SQL per group.
        spec = ModelSpec.parse(index.model)
        precision = inference.precision_of(index, self.vision)
        group = max(MIN_GROUP, await self.vision.ingest_batch_size(spec, precision))
        groups = [work[i : i + group] for i in range(0, len(work), group)]
        outcomes = await asyncio.gather(
            *(self._load_and_embed(index, g, results) for g in groups), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        ready = [w for done in outcomes if not isinstance(done, BaseException) for w in done]
        if not ready:
            return
        embedded = [w for w in ready if w.embedded_here and w.loaded is not None and w.embedding is not None]
        if embedded:
            await inference.guard_after_ingest(
                self.store.pool,
                self.vision,
                index,
                [w.loaded.image for w in embedded if w.loaded is not None],
                np.stack([w.embedding for w in embedded if w.embedding is not None]),
            )
        if index.reverse_search_enabled:
            await asyncio.gather(*(self._features(w) for w in ready if w.features is None))
            for w in ready:
                if w.features is not None:
                    w.features_status = "ready"
        writes = [
            ProductWrite(
                product_id=w.doc["_id"],
                doc=w.doc,
                filter_terms=index_terms(w.doc),
                image_sha256=w.loaded.sha256 if w.loaded else b"",
                embedding=w.embedding,
                features=w.features,
                features_status=w.features_status,
                features_error=w.features_error,
            )
            for w in ready
        ]
        errors = await self.store.write(index, writes)
        for offset, w in enumerate(ready):
            if offset in errors:
                results[w.position] = ItemResult(w.doc["_id"], 500, errors[offset])
            else:
                results[w.position] = ItemResult(w.doc["_id"], 200)

    async def _load_and_embed(
        self, index: IndexRecord, work: list[_Work], results: list[ItemResult | None]
    ) -> list[_Work]:
        """Fetch and decode one group's images, reuse stored vectors of identical images, embed the
        rest; returns the items with a vector (the others have their result set)."""
        loaded = await asyncio.gather(
            *(self._load(w.doc["variantImageUrl"]) for w in work), return_exceptions=True
        )
        ready: list[_Work] = []
        for w, outcome in zip(work, loaded, strict=True):
            if isinstance(outcome, ImageError):
                results[w.position] = ItemResult(w.doc["_id"], 400, f"variantImageUrl: {outcome.message}")
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                w.loaded = outcome
                ready.append(w)
        if not ready:
            return []
        reusable = await self.store.reusable(index, list({w.loaded.sha256 for w in ready if w.loaded}))
        want_features = index.reverse_search_enabled
        to_embed: list[_Work] = []
        for w in ready:
            assert w.loaded is not None
            reuse = reusable.get(w.loaded.sha256)
            if reuse is not None and reuse.embedding.shape == (index.dimensions,):
                w.embedding = reuse.embedding
                if want_features and reuse.features is not None:
                    w.features = reuse.features
            else:
                to_embed.append(w)
        if to_embed:
            await self._embed(index, to_embed)
        for w in ready:
            if w.embedding is None:
                results[w.position] = ItemResult(w.doc["_id"], 500, w.embed_error)
        return [w for w in ready if w.embedding is not None]

    async def _enqueue(self, index: IndexRecord, work: list[_Work], results: list[ItemResult | None]) -> None:
        """Queue mode: the validated documents are stored durably, pending; workers embed them."""
        errors = await self.store.enqueue(index, [(w.doc, index_terms(w.doc)) for w in work])
        for offset, w in enumerate(work):
            if offset in errors:
                results[w.position] = ItemResult(w.doc["_id"], 500, errors[offset])
            else:
                results[w.position] = ItemResult(w.doc["_id"], 202, QUEUED_MESSAGE)

    async def _embed(self, index: IndexRecord, work: list[_Work]) -> None:
        """Embed the batch; when that fails, each image on its own, so one bad image fails only
        its item. An item without a usable vector keeps `embedding` None and says why."""
        spec = ModelSpec.parse(index.model)
        images = [w.loaded.image for w in work if w.loaded is not None]
        vectors: list[np.ndarray | None]
        try:
            vectors = list(await inference.embed_for_ingest(self.vision, index, images))
        except Exception:
            log.warning("batch embedding failed; embedding the %d images one by one", len(work), exc_info=True)
            vectors = []
            for w, image in zip(work, images, strict=True):
                try:
                    precision = inference.precision_of(index, self.vision)
                    vectors.append((await self.vision.embed(spec, [image], precision))[0])
                except Exception as exc:  # reported on the item; the others still land
                    vectors.append(None)
                    w.embed_error = f"image could not be embedded: {exc.__class__.__name__}"
        for w, vector in zip(work, vectors, strict=True):
            if vector is None:
                continue
            if vector.shape != (index.dimensions,) or not np.isfinite(vector).all():
                w.embed_error = "image could not be embedded: the model returned an unusable vector"
                continue
            w.embedding = vector
            w.embedded_here = True

    async def _features(self, w: _Work) -> None:
        assert w.loaded is not None
        try:
            w.features = await self.vision.catalog_features(w.loaded.image)
        except Exception as exc:  # feature extraction must never fail the product itself
            w.features_status = "failed"
            w.features_error = f"local features could not be extracted: {exc.__class__.__name__}"
