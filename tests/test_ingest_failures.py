"""An image the model cannot embed fails its own item (500 + why); nothing is stored for it."""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN
from tests.helpers import TEST_MODEL, data_url, product, product_image

POISON_SIDE = 77  # the injected fault: the model "fails" on images of this width


@pytest.fixture()
def embed_fault(api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Fault injection into the real vision service: a call holding a poison image raises, and
    `nan_side` images come back as NaN vectors; every other call is the real model."""
    vision = api.app.state.services.vision  # type: ignore[attr-defined]
    real = vision.embed
    calls = {"batches": 0, "nan_side": 78}

    async def embed(spec: Any, images: list[Any]) -> np.ndarray:
        calls["batches"] += 1
        if any(image.width == POISON_SIDE for image in images):
            raise RuntimeError("injected model failure")
        vectors = await real(spec, images)
        for row, image in enumerate(images):
            if image.width == calls["nan_side"]:
                vectors[row] = np.nan
        return vectors

    monkeypatch.setattr(vision, "embed", embed)
    return calls


async def test_an_embedding_failure_fails_the_item_not_the_batch(
    api: httpx.AsyncClient, pool: asyncpg.Pool, embed_fault: dict[str, int]
) -> None:
    name = f"embedfail-{secrets.token_hex(3)}"
    created = await api.post(f"/api/v1/indexes/{name}", json={"model": TEST_MODEL}, headers=ADMIN)
    assert created.status_code == 200, created.text
    docs = [
        product("good-1", data_url(product_image(1))),
        product("poison", data_url(product_image(2, size=POISON_SIDE))),
        product("nan", data_url(product_image(3, size=embed_fault["nan_side"]))),
        product("good-2", data_url(product_image(4))),
    ]
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["errors"] is True
    items = {i["_id"]: i for i in body["items"]}
    assert items["good-1"] == {"_id": "good-1", "status": 200}
    assert items["good-2"] == {"_id": "good-2", "status": 200}
    assert items["poison"]["status"] == 500
    assert items["poison"]["message"] == "image could not be embedded: RuntimeError"
    assert items["nan"]["status"] == 500 and "unusable vector" in items["nan"]["message"]
    assert embed_fault["batches"] == 1 + len(docs)  # the batch, then each image on its own

    got = await api.post(
        f"/api/v1/indexes/{name}/get-documents", json={"documentIds": [d["_id"] for d in docs]}, headers=ADMIN
    )
    found = {d["_id"]: d["_found"] for d in got.json()["results"]}
    assert found == {"good-1": True, "poison": False, "nan": False, "good-2": True}
    index_pk = await pool.fetchval("SELECT pk FROM indexes WHERE name = $1", name)
    vectors = await pool.fetch(f"SELECT embedding::real[] AS e FROM vectors_{int(index_pk)}")
    assert len(vectors) == 2
    assert all(np.isfinite(v["e"]).all() and np.linalg.norm(v["e"]) > 0.5 for v in vectors)  # no zero vectors
