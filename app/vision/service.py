"""The vision facade the rest of the app uses: fetch + decode + embed + local features, off the loop."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from app.config import Settings
from app.vision.embedder import Embedder
from app.vision.fetch import ImageFetcher
from app.vision.model import EmbeddingModel, ModelRegistry, ModelSpec


@dataclass(frozen=True)
class LoadedImage:
    sha256: bytes
    image: Image.Image


class VisionService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.fetcher = ImageFetcher(settings)
        self.registry = ModelRegistry(settings.model_weights)
        self.embedder = Embedder(self.registry, settings)
        # numpy's OpenBLAS runs each product on its own thread pool, whose threads spin while
        # waiting; beside torch's inference threads and concurrent requests on 2 cores that turned
        # a 7 ms projection into 220 ms (measured). One BLAS thread per call; requests run in parallel.
        threadpool_limits(limits=1, user_api="blas")
        # Local-feature extraction and matching are CPU-bound numpy/OpenCV work (GIL released).
        self._features_pool = ThreadPoolExecutor(
            max_workers=max(1, settings.cpu_workers), thread_name_prefix="lookalike-features"
        )

    async def fetch(self, url: str) -> bytes:
        return await self.fetcher.fetch(url)

    async def decode(self, data: bytes) -> Image.Image:
        return await self.embedder.decode(data)

    async def load(self, url: str) -> LoadedImage:
        data = await self.fetch(url)
        image = await self.decode(data)
        return LoadedImage(hashlib.sha256(data).digest(), image)

    async def load_model(self, spec: ModelSpec) -> EmbeddingModel:
        return await self.embedder.load_model(spec)

    async def embed(self, spec: ModelSpec, images: list[Image.Image]) -> np.ndarray:
        return await self.embedder.embed(spec, images)

    async def embed_texts(self, spec: ModelSpec, texts: list[str]) -> np.ndarray:
        """Text-tower embeddings (models with `has_text`), in the space of the image embeddings."""
        return await self.embedder.embed_texts(spec, texts)

    async def single_image_ms(self, spec: ModelSpec) -> float:
        return await self.embedder.single_image_ms(spec)

    async def catalog_features(self, image: Image.Image) -> dict[str, Any]:
        """Local features of a catalog image, as `local_features` column values, plus their `aggregate`."""
        from app.vision import aggregate, local_features

        def work() -> dict[str, Any]:
            features = local_features.extract_catalog_features(image)
            return {**local_features.serialize(features), "aggregate": aggregate.image_aggregate(features)}

        return await asyncio.get_running_loop().run_in_executor(self._features_pool, work)

    async def run_cpu(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._features_pool, fn, *args)

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        await self.embedder.aclose()
        self._features_pool.shutdown(wait=False, cancel_futures=True)
