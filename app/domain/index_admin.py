"""Creating an index: validate the settings, load the model once to learn its dimension,
then insert the index with its own vector table and HNSW index (one transaction)."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.auth import new_index_id
from app.domain import index_settings, inference
from app.errors import ApiError, bad_request
from app.storage import indexes
from app.storage.indexes import IndexRecord
from app.vision.model import ModelSpec, ModelUnavailableError
from app.vision.service import VisionService

# pgvector's HNSW limits per element type.
MAX_HNSW_DIMENSIONS = {"halfvec": 4000, "vector": 2000}


def _exists(name: str) -> ApiError:
    return ApiError(409, "index_exists", f"index {name!r} already exists")


async def create_index(pool: asyncpg.Pool, vision: VisionService, name: str, body: Any) -> IndexRecord:
    name = index_settings.validate_index_name(name)
    create = index_settings.parse_create_body(body)
    try:
        spec = ModelSpec.parse(create.model)
    except ValueError as exc:
        raise bad_request(f"model: {exc}", "invalid_model") from exc
    if await indexes.get_index(pool, name) is not None:
        raise _exists(name)
    try:
        model = await vision.load_model(spec)
    except ModelUnavailableError as exc:
        raise bad_request(str(exc), "model_unavailable") from exc
    except ValueError as exc:  # an architecture that cannot be built or run at the requested imageSize
        raise bad_request(f"model: {exc}", "invalid_model") from exc
    max_dims = MAX_HNSW_DIMENSIONS[create.vector_type]
    if model.dim > max_dims:
        raise bad_request(
            f"model {spec.name} produces {model.dim}-d embeddings; HNSW on {create.vector_type} supports "
            f"at most {max_dims}",
            "invalid_model",
        )
    settings = {
        "model": spec.to_json(),
        "vectorType": create.vector_type,
        "dimensions": model.dim,
        "reverseImageSearch": create.reverse_search,
        "inference": inference.initial_settings(vision),
    }
    try:
        async with pool.acquire() as conn, conn.transaction():
            return await indexes.create_index(
                conn,
                name=name,
                index_id=new_index_id(),
                settings=settings,
                model=spec.to_json(),
                dimensions=model.dim,
                vector_type=create.vector_type,
            )
    except indexes.IndexExistsError as exc:
        raise _exists(name) from exc
