"""The vision facade the rest of the app uses: fetch + decode + embed + local features, off the loop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from app.config import Settings
from app.vision import guard
from app.vision.backend import BackendUnavailableError, openvino_installed, resolve_backend
from app.vision.embedder import Embedder
from app.vision.fetch import ImageFetcher
from app.vision.guard import GuardResult
from app.vision.model import EmbeddingModel, ModelRegistry, ModelSpec

log = logging.getLogger("lookalike.vision")


@dataclass(frozen=True)
class LoadedImage:
    sha256: bytes
    image: Image.Image


class VisionService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.fetcher = ImageFetcher(settings)
        # "onnx" or "torch" (LOOKALIKE_INFERENCE_BACKEND=auto resolved here, once per process).
        self.backend = resolve_backend(settings.inference_backend)
        if self.backend == "onnx" and settings.inference_runtime == "openvino" and not openvino_installed():
            raise BackendUnavailableError(
                "LOOKALIKE_INFERENCE_RUNTIME=openvino needs the openvino package: pip install openvino"
            )
        self.registry = ModelRegistry(
            settings.model_weights,
            backend=self.backend,
            graph_dir=settings.data_dir / "graphs",
            threads=settings.inference_threads,
            device="auto",
            fp32_runtime=settings.inference_runtime,
        )
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

    async def embed(self, spec: ModelSpec, images: list[Image.Image], precision: str = "fp32") -> np.ndarray:
        return await self.embedder.embed(spec, images, precision)

    async def embed_texts(self, spec: ModelSpec, texts: list[str]) -> np.ndarray:
        """Text-tower embeddings (models with `has_text`), in the space of the image embeddings."""
        return await self.embedder.embed_texts(spec, texts)

    async def ingest_batch_size(self, spec: ModelSpec, precision: str = "fp32") -> int:
        return await self.embedder.ingest_batch_size(spec, precision)

    async def single_image_ms(self, spec: ModelSpec, precision: str = "fp32") -> float:
        return await self.embedder.single_image_ms(spec, precision)

    @property
    def int8_allowed(self) -> bool:
        """Whether int8 graphs may be used at all (onnx backend, LOOKALIKE_INFERENCE_PRECISION=auto)."""
        return self.backend == "onnx" and self.settings.inference_precision == "auto"

    async def guard_int8(
        self, spec: ModelSpec, images: list[Image.Image], fp32: np.ndarray | None = None
    ) -> GuardResult | None:
        """Compare the model's int8 and fp32 graphs on `images` (see app.vision.guard); None if no int8 graph.

        `fp32`: the images' fp32 embeddings where the caller has them already (ingest), saving that pass.
        """
        model = await self.load_model(spec)
        if not self.int8_allowed or "int8" not in model.precisions:
            return None
        sample = images[: guard.MAX_SAMPLE]
        batch = await self.embedder.preprocess(model, sample)
        known = fp32[: len(sample)] if fp32 is not None else None
        return await self.embedder.run_inference(guard.check, model, batch, known)

    async def warm_up(self, specs: list[ModelSpec]) -> None:
        """Load (and, the first time, export) these models before requests need them."""
        for spec in dict.fromkeys(specs):
            try:
                await self.load_model(spec)
            except Exception:  # a model that cannot load fails its index's requests, not the start-up
                log.warning("warm-up: model %s could not be loaded", spec.timm_name, exc_info=True)

    async def catalog_features(self, image: Image.Image) -> dict[str, Any]:
        """Local features of a catalog image, as `local_features` column values, plus their `aggregate`
        and the image's `colour` descriptor."""
        from app.vision import aggregate, colour, local_features

        def work() -> dict[str, Any]:
            features = local_features.extract_catalog_features(image)
            return {
                **local_features.serialize(features),
                "aggregate": aggregate.image_aggregate(features),
                "colour": colour.catalog_colour(image),
            }

        return await asyncio.get_running_loop().run_in_executor(self._features_pool, work)

    async def run_cpu(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._features_pool, fn, *args)

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        await self.embedder.aclose()
        self._features_pool.shutdown(wait=False, cancel_futures=True)
