"""Text -> image and hybrid search on /search (searchMethod), on an open_clip index with the
offline random-weight ViT-B-32: orders computed here from the stored vectors and the text
embedding, the filter inside, reciprocal rank fusion, and LEXICAL as it was."""

from __future__ import annotations

import secrets
from fractions import Fraction
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest

from app.storage.search import RRF_K
from app.vision.model import ModelSpec, load_model
from app.vision.openclip import OFFLINE_OPEN_CLIP_MODEL, OpenClipModel
from tests.conftest import ADMIN
from tests.helpers import TEST_MODEL, data_url, product, product_image

COLOURS = ["red", "blue", "green", "black", "white"]
MATERIALS = ["leather", "cotton", "wool", "canvas"]
KINDS = ["boot", "shirt", "hat"]
N_PRODUCTS = 36


def _title(i: int) -> str:
    return f"{COLOURS[i % 5].title()} {MATERIALS[i % 4]} {KINDS[i % 3]}"


async def _create(api: httpx.AsyncClient, prefix: str, model: object, n: int) -> dict[str, Any]:
    name = f"{prefix}-{secrets.token_hex(3)}"
    r = await api.post(f"/api/v1/indexes/{name}", json={"model": model}, headers=ADMIN)
    assert r.status_code == 200, r.text
    docs = [
        product(f"p{i:02d}", data_url(product_image(i)), productTitle=_title(i), brand="Nike" if i % 3 == 0 else "Acme")
        for i in range(n)
    ]
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert r.json()["errors"] is False, r.text
    index_id = (await api.get(f"/api/v1/indexes/{name}", headers=ADMIN)).json()["indexId"]
    return {"name": name, "headers": {"x-marqo-index-id": index_id}, "docs": {d["_id"]: d for d in docs}}


@pytest.fixture(scope="module")
async def shop(api: httpx.AsyncClient) -> dict[str, Any]:
    return await _create(api, "mm", OFFLINE_OPEN_CLIP_MODEL, N_PRODUCTS)


@pytest.fixture(scope="module")
async def image_only_shop(api: httpx.AsyncClient) -> dict[str, Any]:
    return await _create(api, "mm-timm", TEST_MODEL, 6)


@pytest.fixture(scope="module")
def text_model() -> OpenClipModel:
    model = load_model(ModelSpec.parse(OFFLINE_OPEN_CLIP_MODEL), allow_download=False)
    assert isinstance(model, OpenClipModel)
    return model


async def _search(api: httpx.AsyncClient, shop: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
    return await api.post(f"/api/v1/indexes/{shop['name']}/search", json=body, headers=shop["headers"])


async def _stored_vectors(pool: asyncpg.Pool, name: str) -> dict[str, np.ndarray]:
    pk = await pool.fetchval("SELECT pk FROM indexes WHERE name = $1", name)
    rows = await pool.fetch(
        f"SELECT p.product_id, v.embedding::real[] AS e FROM vectors_{int(pk)} v JOIN products p ON p.pk = v.product_pk"
    )
    return {r["product_id"]: np.asarray(r["e"], dtype=np.float64) for r in rows}


def _cosines(vectors: dict[str, np.ndarray], query: np.ndarray) -> dict[str, float]:
    q = query.astype(np.float64)
    return {pid: float(v @ q / (np.linalg.norm(v) * np.linalg.norm(q))) for pid, v in vectors.items()}


def _by_cosine(cosines: dict[str, float], ids: set[str] | None = None) -> list[str]:
    return sorted((pid for pid in cosines if ids is None or pid in ids), key=lambda pid: (-cosines[pid], pid))


async def _lexical_order(pool: asyncpg.Pool, name: str, q: str, where: str = "true") -> list[str]:
    """Today's full-text ranking, written out here: websearch_to_tsquery + ts_rank_cd, ties by _id."""
    rows = await pool.fetch(
        "SELECT p.product_id FROM products p JOIN indexes i ON i.pk = p.index_pk,"
        " websearch_to_tsquery('english', $2) AS q(query)"
        f" WHERE i.name = $1 AND p.search_tsv @@ q.query AND {where}"
        ' ORDER BY ts_rank_cd(p.search_tsv, q.query) DESC, p.product_id COLLATE "C"',
        name,
        q,
    )
    return [r["product_id"] for r in rows]


def _fused(lexical: list[str], vector: list[str], depth: int) -> list[tuple[str, Fraction]]:
    """Reciprocal rank fusion of two rankings, each cut at `depth`; ties by _id (exact fractions)."""
    scores: dict[str, Fraction] = {}
    for ranking in (lexical[:depth], vector[:depth]):
        for rank, pid in enumerate(ranking, start=1):
            scores[pid] = scores.get(pid, Fraction(0)) + Fraction(1, RRF_K + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:depth]


async def test_tensor_ranks_by_text_to_image_cosine(api, pool, shop, text_model) -> None:  # type: ignore[no-untyped-def]
    q = "red leather boot"
    r = await _search(api, shop, {"q": q, "searchMethod": "TENSOR", "limit": 15})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 15
    cosines = _cosines(await _stored_vectors(pool, shop["name"]), text_model.embed_texts([q])[0])
    expected = _by_cosine(cosines)[:15]
    assert [h["_id"] for h in hits] == expected
    for hit in hits:
        assert hit["_score"] == pytest.approx(cosines[hit["_id"]], abs=2e-3)
    timing = r.headers["server-timing"]
    assert "embed;dur=" in timing and "sql;dur=" in timing
    # offset pages through the same order
    r = await _search(api, shop, {"q": q, "searchMethod": "tensor", "limit": 5, "offset": 5})
    assert [h["_id"] for h in r.json()["hits"]] == expected[5:10]


async def test_tensor_filter_holds_with_a_full_limit(api, pool, shop, text_model) -> None:  # type: ignore[no-untyped-def]
    q = "blue wool hat"
    nike = {pid for pid, d in shop["docs"].items() if d["brand"] == "Nike"}
    assert len(nike) == 12
    r = await _search(api, shop, {"q": q, "searchMethod": "TENSOR", "limit": 10, "filter": "brand:(Nike)"})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    cosines = _cosines(await _stored_vectors(pool, shop["name"]), text_model.embed_texts([q])[0])
    assert [h["_id"] for h in hits] == _by_cosine(cosines, nike)[:10]
    r = await _search(api, shop, {"q": q, "searchMethod": "TENSOR", "limit": 50, "filter": "brand:(Nike)"})
    assert sorted(h["_id"] for h in r.json()["hits"]) == sorted(nike)  # every match, no more


@pytest.mark.parametrize("filter_text", [None, "brand:(Acme)"])
async def test_hybrid_fuses_by_reciprocal_rank(api, pool, shop, text_model, filter_text) -> None:  # type: ignore[no-untyped-def]
    q = "leather hat"  # products 8, 20, 32 (all Acme)
    limit = 8
    body: dict[str, Any] = {"q": q, "searchMethod": "HYBRID", "limit": limit}
    ids: set[str] | None = None
    where = "true"
    if filter_text:
        body["filter"] = filter_text
        ids = {pid for pid, d in shop["docs"].items() if d["brand"] == "Acme"}
        where = "p.doc->>'brand' = 'Acme'"
    r = await _search(api, shop, body)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    lexical = await _lexical_order(pool, shop["name"], q, where)
    cosines = _cosines(await _stored_vectors(pool, shop["name"]), text_model.embed_texts([q])[0])
    expected = _fused(lexical, _by_cosine(cosines, ids), limit)
    assert [h["_id"] for h in hits] == [pid for pid, _ in expected]
    for hit, (_, score) in zip(hits, expected, strict=True):
        assert hit["_score"] == pytest.approx(float(score), rel=1e-9)
    # lexical matches the vector leg missed still come in, where their lexical rank puts them
    assert set(lexical[:limit]) & {h["_id"] for h in hits}
    if ids is not None:
        assert all(h["_id"] in ids for h in hits)
    timing = r.headers["server-timing"]
    assert "embed;dur=" in timing and "sql;dur=" in timing


async def test_hybrid_is_the_default_with_a_text_tower(api, shop) -> None:  # type: ignore[no-untyped-def]
    q = "green canvas shirt"
    default = await _search(api, shop, {"q": q, "limit": 6})
    hybrid = await _search(api, shop, {"q": q, "limit": 6, "searchMethod": "HYBRID"})
    assert default.status_code == 200 and default.json()["hits"] == hybrid.json()["hits"]
    # HYBRID pages: offset + limit is one window of the fused ranking
    window = (await _search(api, shop, {"q": q, "limit": 10, "searchMethod": "HYBRID"})).json()["hits"]
    page = (await _search(api, shop, {"q": q, "limit": 5, "offset": 5, "searchMethod": "HYBRID"})).json()["hits"]
    assert [h["_id"] for h in page] == [h["_id"] for h in window[5:10]]


async def test_lexical_is_unchanged(api, pool, shop, image_only_shop) -> None:  # type: ignore[no-untyped-def]
    for target, q in ((shop, "wool hat"), (shop, "red"), (image_only_shop, "leather")):
        body: dict[str, Any] = {"q": q, "limit": 20}
        if target is shop:
            body["searchMethod"] = "LEXICAL"
        r = await _search(api, target, body)
        assert r.status_code == 200, r.text
        assert [h["_id"] for h in r.json()["hits"]] == (await _lexical_order(pool, target["name"], q))[:20]
        assert "embed" not in r.headers["server-timing"]


async def test_text_less_model_refuses_tensor_and_hybrid(api, image_only_shop) -> None:  # type: ignore[no-untyped-def]
    for method in ("TENSOR", "HYBRID"):
        r = await _search(api, image_only_shop, {"q": "leather", "searchMethod": method})
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "search_method_unsupported"
        assert "no text tower" in r.json()["error"]


@pytest.mark.parametrize("value", ["FUZZY", "", 3, ["TENSOR"], True])
async def test_invalid_search_method_is_400(api, shop, value) -> None:  # type: ignore[no-untyped-def]
    r = await _search(api, shop, {"q": "boot", "searchMethod": value})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_search_method"
    assert "LEXICAL, TENSOR, HYBRID" in r.json()["error"]


async def test_search_by_image_on_an_open_clip_index(api, shop) -> None:  # type: ignore[no-untyped-def]
    for i in (0, 7, 20):
        r = await _search(api, shop, {"q": data_url(product_image(i)), "limit": 5, "filter": None})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert hits[0]["_id"] == f"p{i:02d}" and hits[0]["_score"] > 0.99
        assert [h["_score"] for h in hits] == sorted((h["_score"] for h in hits), reverse=True)
    settings = (await api.get(f"/api/v1/indexes/{shop['name']}/settings", headers=ADMIN)).json()
    assert settings["model"] == OFFLINE_OPEN_CLIP_MODEL and settings["dimensions"] == 512

