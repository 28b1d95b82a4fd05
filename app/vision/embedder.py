"""Async front of the models: micro-batched inference and image decoding, off the event loop.

- Inference runs in one dedicated thread. torch parallelises each forward pass
  over `inference_threads` cores itself, so two forwards at once would only
  fight over the same cores; one thread also gives a natural batching point.
- Per model (spec) a queue and a worker task: while a forward pass runs, new
  requests wait in the queue, and the next pass takes as many of them as fit in
  `embed_batch_size` images. Nobody waits for a batch to fill (no added latency
  when idle), and under load the batches fill up by themselves.
- Preprocessing (resize, normalise) and decoding run in a small CPU pool
  (`cpu_workers`), overlapping with inference.
- Admission is bounded: at most `8 x embed_batch_size` images may be queued or
  in flight; beyond that `embed` waits (back-pressure). Each chunk is admitted
  whole, so concurrent requests cannot deadlock holding partial shares.
  `queue_depth` reports the number for metrics and for callers that prefer to
  shed load.
- Text queries (models with a text tower) go the same way: tokenised in the CPU
  pool, batched per model on the inference thread. Repeated query strings are
  answered from a bounded LRU cache keyed by model and text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from app.config import Settings
from app.vision.decode import decode_image
from app.vision.model import EmbeddingModel, ModelRegistry, ModelSpec

T = TypeVar("T")

_MAX_QUEUED_BATCHES = 8
# Text embeddings kept for repeated queries: 4096 x 512-d float32 = 8 MiB.
TEXT_CACHE_ENTRIES = 4096


@dataclass
class _Job:
    batch: torch.Tensor  # preprocessed images or token ids, at most embed_batch_size rows
    future: asyncio.Future[np.ndarray]


@dataclass
class _Batcher:
    model: EmbeddingModel
    precision: str = "fp32"  # the image graph's precision (see EmbeddingModel.embed_tensor)
    text: bool = False  # forward passes through the text tower (token ids), else the image tower
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    carry: _Job | None = None  # taken from the queue but did not fit the last batch

    def cancel_waiting(self) -> None:
        """Cancel every job not yet handed to a forward pass, so no caller waits forever."""
        jobs = [self.carry] if self.carry is not None else []
        self.carry = None
        while not self.queue.empty():
            jobs.append(self.queue.get_nowait())
        for job in jobs:
            job.future.cancel()


class Embedder:
    """Embeds and decodes images for async callers without blocking the event loop."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.batch_size = max(1, settings.embed_batch_size)
        self._max_pixels = settings.max_image_pixels
        if settings.inference_threads > 0:
            torch.set_num_threads(settings.inference_threads)  # process-wide intra-op pool
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-infer")
        self._cpu_pool = ThreadPoolExecutor(
            max_workers=max(1, settings.cpu_workers), thread_name_prefix="lookalike-cpu"
        )
        self._load_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lookalike-load")
        self._batchers: dict[str, _Batcher] = {}
        self._max_pending = self.batch_size * _MAX_QUEUED_BATCHES
        self._pending_images = 0
        self._admission_waiters: list[asyncio.Future[None]] = []
        self.batches_run = 0  # forward passes so far (for metrics and tests)
        self._text_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.text_cache_hits = 0
        self._closed = False
        self._loads: set[concurrent.futures.Future[EmbeddingModel]] = set()

    # -- metrics ---------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Images accepted for embedding and not yet finished (queued or in a forward pass)."""
        return self._pending_images

    # -- public API ------------------------------------------------------------

    async def load_model(self, spec: ModelSpec) -> EmbeddingModel:
        """The loaded model for `spec`; the first load takes seconds and runs in a thread."""
        loaded = self.registry.loaded_model(spec)
        if loaded is not None:
            return loaded
        # The thread's own future is kept: a caller cancelled meanwhile (the warm-up at shutdown)
        # does not stop the thread, and `aclose` waits for it rather than leaving it exporting
        # (and logging) after the app is gone.
        load = self._load_pool.submit(self.registry.get, spec)
        self._loads.add(load)
        load.add_done_callback(self._loads.discard)
        return await asyncio.wrap_future(load)

    async def single_image_ms(self, spec: ModelSpec, precision: str = "fp32") -> float:
        """The model's single-image forward time at `precision` (measured once, on the inference thread)."""
        model = self.registry.loaded_model(spec) or await self.load_model(spec)
        measured = model.measured_single_image_ms(precision)
        if measured is not None:  # every request after the first: no thread hop
            return measured
        return await self._run(self._infer_pool, model.single_image_ms, precision)

    async def ingest_batch_size(self, spec: ModelSpec, precision: str = "fp32") -> int:
        """The pass size that embeds the most images per second for this model here (measured once,
        on the inference thread; see EmbeddingModel.best_batch_size), at most `embed_batch_size`."""
        model = self.registry.loaded_model(spec) or await self.load_model(spec)
        measured = model.measured_batch_size(precision, self.batch_size)
        if measured is not None:
            return measured
        return await self._run(self._infer_pool, model.best_batch_size, precision, self.batch_size)

    def _pass_rows(self, model: EmbeddingModel, precision: str) -> int:
        """Rows per forward pass: the measured best size once ingest measured it, else embed_batch_size."""
        return model.measured_batch_size(precision, self.batch_size) or self.batch_size

    async def preprocess(self, model: EmbeddingModel, images: Sequence[Image.Image]) -> torch.Tensor:
        """model.preprocess(images) in the CPU pool."""
        return await self._run(self._cpu_pool, model.preprocess, list(images))

    async def run_inference(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on the inference thread (between forward passes, never beside one)."""
        return await self._run(self._infer_pool, fn, *args)

    async def decode(self, data: bytes) -> Image.Image:
        """decode_image(data, settings.max_image_pixels) in the CPU pool; raises ImageError."""
        return await self._run(self._cpu_pool, decode_image, data, self._max_pixels)

    async def embed(self, spec: ModelSpec, images: Sequence[Image.Image], precision: str = "fp32") -> np.ndarray:
        """float32 (len(images), dim) L2-normalised embeddings, batched with concurrent callers.

        `precision` picks the model's graph ("fp32" or "int8", see `EmbeddingModel.embed_tensor`);
        requests at different precisions never share a forward pass.
        """
        if self._closed:
            raise RuntimeError("Embedder is closed")
        model = await self.load_model(spec)
        if not images:
            return np.zeros((0, model.dim), dtype=np.float32)
        rows = self._pass_rows(model, precision)
        chunks = [list(images[i : i + rows]) for i in range(0, len(images), rows)]
        parts = await asyncio.gather(*(self._embed_chunk(spec, model, chunk, precision) for chunk in chunks))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def embed_texts(self, spec: ModelSpec, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dim) L2-normalised text embeddings (text tower), cached and batched.

        ValueError if the model has no text tower.
        """
        if self._closed:
            raise RuntimeError("Embedder is closed")
        model = await self.load_model(spec)
        embed_tokens = getattr(model, "embed_tokens", None)
        if not model.has_text or embed_tokens is None:
            raise ValueError(f"model {spec.name} has no text tower")
        rows: list[np.ndarray | None] = []
        for text in texts:
            cached = self._text_cache.get((spec.cache_key, text))
            if cached is not None:
                self._text_cache.move_to_end((spec.cache_key, text))
                self.text_cache_hits += 1
            rows.append(cached)
        missing = list(dict.fromkeys(t for t, row in zip(texts, rows, strict=True) if row is None))
        if missing:
            chunks = [missing[i : i + self.batch_size] for i in range(0, len(missing), self.batch_size)]
            parts = await asyncio.gather(*(self._embed_text_chunk(spec, model, chunk) for chunk in chunks))
            fresh = dict(zip(missing, np.concatenate(parts), strict=True))
            for text, vector in fresh.items():
                vector.setflags(write=False)  # shared by every later caller
                self._text_cache[(spec.cache_key, text)] = vector
            while len(self._text_cache) > TEXT_CACHE_ENTRIES:
                self._text_cache.popitem(last=False)
            rows = [fresh[t] if row is None else row for t, row in zip(texts, rows, strict=True)]
        if not rows:
            return np.zeros((0, model.dim), dtype=np.float32)
        return np.stack([r for r in rows if r is not None])

    def close(self) -> None:
        """Stop the batch workers and the thread pools (work in progress is abandoned)."""
        self._closed = True
        for batcher in self._batchers.values():
            if batcher.task is not None:
                batcher.task.cancel()
            batcher.cancel_waiting()
        self._batchers.clear()
        for pool in (self._infer_pool, self._cpu_pool, self._load_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # -- internals -------------------------------------------------------------

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    async def _admit(self, n: int) -> None:
        # All n at once; a lone request larger than the bound is still let in.
        while self._pending_images and self._pending_images + n > self._max_pending:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._admission_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._admission_waiters:
                    self._admission_waiters.remove(waiter)
        self._pending_images += n

    def _release(self, n: int) -> None:
        self._pending_images -= n
        waiters, self._admission_waiters = self._admission_waiters, []
        for waiter in waiters:  # each re-checks the bound
            if not waiter.done():
                waiter.set_result(None)

    async def _embed_chunk(
        self, spec: ModelSpec, model: EmbeddingModel, chunk: list[Image.Image], precision: str
    ) -> np.ndarray:
        n = len(chunk)
        await self._admit(n)
        try:
            batch = await self._run(self._cpu_pool, model.preprocess, chunk)
            future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
            self._batcher(spec, model, precision).queue.put_nowait(_Job(batch, future))
            return await future
        finally:
            self._release(n)

    async def _embed_text_chunk(self, spec: ModelSpec, model: EmbeddingModel, chunk: list[str]) -> np.ndarray:
        n = len(chunk)
        await self._admit(n)
        try:
            tokens = await self._run(self._cpu_pool, model.tokenize, chunk)  # type: ignore[attr-defined]
            future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
            self._batcher(spec, model, text=True).queue.put_nowait(_Job(tokens, future))
            return await future
        finally:
            self._release(n)

    def _batcher(
        self, spec: ModelSpec, model: EmbeddingModel, precision: str = "fp32", *, text: bool = False
    ) -> _Batcher:
        if self._closed:  # closed while this request was being preprocessed
            raise RuntimeError("Embedder is closed")
        key = f"{spec.cache_key}#text" if text else f"{spec.cache_key}/{precision}"
        batcher = self._batchers.get(key)
        loop = asyncio.get_running_loop()
        # A new worker if none, if it died, or if it belongs to another event loop (tests).
        if batcher is None or batcher.task is None or batcher.task.done() or batcher.task.get_loop() is not loop:
            batcher = _Batcher(model, precision, text=text)
            batcher.task = loop.create_task(self._work(batcher), name=f"lookalike-embed-{key}")
            self._batchers[key] = batcher
        return batcher

    async def _work(self, batcher: _Batcher) -> None:
        while True:
            if batcher.carry is not None:
                job, batcher.carry = batcher.carry, None
            else:
                job = await batcher.queue.get()
            jobs = [job]
            rows = job.batch.shape[0]
            limit = self.batch_size if batcher.text else self._pass_rows(batcher.model, batcher.precision)
            # Take whatever else is already waiting, up to one batch.
            while rows < limit and not batcher.queue.empty():
                nxt = batcher.queue.get_nowait()
                if rows + nxt.batch.shape[0] > limit:
                    batcher.carry = nxt
                    break
                jobs.append(nxt)
                rows += nxt.batch.shape[0]
            jobs = [j for j in jobs if not j.future.done()]  # callers that gave up
            if not jobs:
                continue
            batch = jobs[0].batch if len(jobs) == 1 else torch.cat([j.batch for j in jobs])
            try:
                if batcher.text:
                    out = await self._run(self._infer_pool, batcher.model.embed_tokens, batch)  # type: ignore[attr-defined]
                else:
                    out = await self._run(self._infer_pool, batcher.model.embed_tensor, batch, batcher.precision)
            except asyncio.CancelledError:
                for j in jobs:
                    j.future.cancel()
                raise
            except Exception as exc:  # hand the failure to each waiting caller
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            self.batches_run += 1
            start = 0
            for j in jobs:
                end = start + j.batch.shape[0]
                if not j.future.done():
                    j.future.set_result(out[start:end])
                start = end

    async def aclose(self) -> None:
        """close(), then wait for the worker tasks to finish cancelling and for model loads in
        progress to stop (an export stops at its next step: see ModelRegistry.cancel_exports)."""
        tasks = [b.task for b in self._batchers.values() if b.task is not None]
        self.registry.cancel_exports()
        loads = [asyncio.wrap_future(f) for f in list(self._loads)]
        self.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*loads, return_exceptions=True)
