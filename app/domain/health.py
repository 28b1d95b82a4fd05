"""What /health and the scrape-time metrics report: database reachable, models, queue, pool."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from app.vision.service import VisionService


@dataclass(frozen=True)
class RuntimeSnapshot:
    models_loaded: list[str]
    embed_queue_depth: int
    embed_batches_run: int
    pool_size: int
    pool_idle: int
    pool_max: int


class HealthService:
    def __init__(self, pool: asyncpg.Pool, vision: VisionService):
        self.pool = pool
        self.vision = vision

    def snapshot(self) -> RuntimeSnapshot:
        """Cheap, synchronous: read at every scrape."""
        embedder = self.vision.embedder
        return RuntimeSnapshot(
            models_loaded=[spec.name for spec in self.vision.registry.loaded()],
            embed_queue_depth=embedder.queue_depth,
            embed_batches_run=embedder.batches_run,
            pool_size=self.pool.get_size(),
            pool_idle=self.pool.get_idle_size(),
            pool_max=self.pool.get_max_size(),
        )

    async def database_answers(self, timeout_s: float = 2.0) -> bool:
        """One round trip to PostgreSQL within `timeout_s` (a connection from the pool, SELECT 1)."""
        try:
            async with self.pool.acquire(timeout=timeout_s) as conn:
                await conn.fetchval("SELECT 1")
        except Exception:  # any failure means "not ready": the probe reports it, never raises
            return False
        return True
