"""Local-feature backfill: when reverse image search is turned on for a populated index.

A single background task per process claims pending products (`FOR UPDATE SKIP
LOCKED`, so several processes share the work), re-fetches each image, extracts
its local features off the event loop and stores them. Search keeps working
meanwhile: products without features are ranked by their global score alone.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from PIL import Image

from app.domain import inference
from app.errors import ImageError
from app.storage import products
from app.vision.service import VisionService

log = logging.getLogger("lookalike.backfill")

BATCH = 16


class FeatureBackfill:
    def __init__(self, pool: asyncpg.Pool, vision: VisionService, idle_poll_s: float = 30.0):
        self.pool = pool
        self.vision = vision
        self.idle_poll_s = idle_poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # one batch at a time in this process: `drain` then waits for the background task's batch
        # (whose rows SKIP LOCKED would hide) instead of returning while it is still in flight
        self._batch = asyncio.Lock()
        self._guard_rechecked: set[int] = set()  # indexes whose guard this backfill checked again

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lookalike-feature-backfill")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                done = await self.run_once()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("feature backfill paused by a database error; retrying", exc_info=True)
                done = 0
                await asyncio.sleep(2)
            if done == 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.idle_poll_s)
                except TimeoutError:
                    pass

    async def run_once(self) -> int:
        """Process one batch; returns how many products it finished."""
        loaded: dict[int, list[Image.Image]] = {}  # index pk -> this batch's decoded images
        async with self._batch, self.pool.acquire() as conn, conn.transaction():
            claimed = await products.claim_pending_features(conn, BATCH)
            if not claimed:
                return 0
            outcomes = await asyncio.gather(*(self._extract(url) for _, _, url, _ in claimed))
            for (product_pk, index_pk, _, _), (features, error, image) in zip(claimed, outcomes, strict=True):
                await products.finish_features(conn, index_pk, product_pk, features, error)
                if image is not None:
                    loaded.setdefault(index_pk, []).append(image)
        # The images are decoded anyway: the int8 guard is checked again on them, once per index
        # and process (the first batch of enough of its images), and an index whose guard is
        # still pending (ingested in small batches) gets its verdict from them.
        for index_pk, images in loaded.items():
            try:
                if await inference.guard_from_stored(
                    self.pool, self.vision, index_pk, images, again=index_pk not in self._guard_rechecked
                ):
                    self._guard_rechecked.add(index_pk)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("int8 guard during backfill failed; the stored verdict stays", exc_info=True)
        return len(claimed)

    async def _extract(self, url: str) -> tuple[dict | None, str | None, Image.Image | None]:
        try:
            loaded = await self.vision.load(url)
            return await self.vision.catalog_features(loaded.image), None, loaded.image
        except ImageError as exc:
            return None, f"image could not be loaded: {exc.message}", None
        except Exception as exc:  # one bad image must not stop the backfill
            log.warning("feature extraction failed for %s", url[:80], exc_info=True)
            return None, f"local features could not be extracted: {exc.__class__.__name__}", None

    async def drain(self) -> None:
        """Finish all pending work now (tests, `lookalike index backfill`)."""
        while await self.run_once():
            pass
