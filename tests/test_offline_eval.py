"""benchmarks.offline_eval reproduces reverse search (app.domain.reverse) in numpy.

Unit checks of the candidate pool and the verified-set ranking, and one end-to-end
check: the same catalog and photos through the HTTP API and through the offline
pipeline give the same hits.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import replace

import httpx
import numpy as np
import pytest

from app.domain import rerank
from app.samples import wild
from app.vision import aggregate, colour, crops
from app.vision import local_features as lf
from app.vision.decode import decode_image
from app.vision.model import ModelSpec
from benchmarks import offline_eval as oe
from tests.conftest import ADMIN
from tests.helpers import TEST_MODEL, product


def test_top_k_orders_best_first_ties_by_index_and_skips_missing() -> None:
    s = np.array([0.1, 0.5, -np.inf, 0.5, 0.9, 0.2], np.float32)
    assert oe.top_k(s, 3).tolist() == [4, 1, 3]
    assert oe.top_k(s, 10).tolist() == [4, 1, 3, 5, 0]
    assert oe.top_k(np.full(3, -np.inf), 2).size == 0


def test_candidate_pool_merges_both_retrievals_and_scores_every_candidate_by_both() -> None:
    # 6 products; 3 query boxes, the first 2 embedded; product 5 has no aggregate
    emb = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.8],
            [0.2, 0.7, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.99, 0.0],  # not embedded with n_crops=2
        ],
        np.float32,
    )
    has_agg = np.array([True, True, True, True, True, False])
    agg = np.array([[0.1, 0.2, 0.6, 0.3, 0.0, -np.inf], [0.0, 0.1, 0.2, 0.5, 0.0, -np.inf]], np.float32)
    p = replace(rerank.DEFAULT_PARAMS, n_crops=2, pool_size=2, aggregate_pool=1)
    pool = oe.candidate_pool(emb, agg, has_agg, p)
    # embedding keys crop by crop, best first, then the aggregate-only ones
    assert [c.product_key for c in pool] == [0, 5, 1, 2, 3]
    by_key = {c.product_key: c for c in pool}
    assert by_key[2].global_score == pytest.approx(0.0) and by_key[2].aggregate_score == pytest.approx(0.6)
    assert by_key[0].global_score == pytest.approx(0.9) and by_key[0].aggregate_score == pytest.approx(0.1)
    assert by_key[5].aggregate_score is None
    assert all(c.verification is None for c in pool)
    # aggregate_pool 0: embedding retrieval only, aggregates still score
    pool = oe.candidate_pool(emb, agg, has_agg, replace(p, aggregate_pool=0))
    assert [c.product_key for c in pool] == [0, 5, 1]
    assert pool[0].aggregate_score == pytest.approx(0.1)
    # no box aggregate at all: no aggregate scores
    pool = oe.candidate_pool(emb, agg[:0], has_agg, p)
    assert [c.product_key for c in pool] == [0, 5, 1] and all(c.aggregate_score is None for c in pool)


def test_rerank_pool_ranks_only_the_verified_set() -> None:
    good = lf.Verification(30, 40, True, 0.7, colour_agreement=1.0)
    # priors (aggregate_weight 4): 1.3, 1.1, 0.2, 0.5
    cands = [
        rerank.Candidate(k, g, None, a) for k, g, a in [(0, 0.9, 0.1), (1, 0.1, 0.25), (2, 0.2, 0.0), (3, 0.5, None)]
    ]
    ver = {k: good if k == 2 else lf.NO_VERIFICATION for k in range(4)}
    p = replace(rerank.DEFAULT_PARAMS, verify_top=3)
    ranked, verified = oe.rerank_pool(cands, ver, p)  # type: ignore[arg-type]
    # 2 would win with its verification, but it is not among the verify_top by prior
    assert verified == [0, 1, 3] and ranked == [0, 1, 3]
    ranked, verified = oe.rerank_pool(cands, ver, replace(p, verify_top=0))  # type: ignore[arg-type]
    assert verified == [0, 1, 3, 2] and ranked == [2, 0, 1, 3]
    ranked, _ = oe.rerank_pool(cands, None, replace(p, verify_top=0))
    assert ranked == [0, 1, 3, 2]


# --------------------------------------------------------------------------- service == offline


def _jpeg(image) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.slow
async def test_offline_pipeline_gives_the_service_hits(api: httpx.AsyncClient, images) -> None:  # type: ignore[no-untyped-def]
    """Exact vectors ("vector" columns), 4 crops, a pool small enough for the retrievals to matter."""
    name = f"offline-{secrets.token_hex(3)}"
    pool_size = 10
    settings = {"enabled": True, "queryCrops": 4, "candidatePool": pool_size}
    r = await api.post(
        f"/api/v1/indexes/{name}",
        json={"model": TEST_MODEL, "vectorType": "vector", "reverseImageSearch": settings},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    catalog = wild.generate_catalog(90, seed=11)
    queries = wild.generate_queries(catalog, 8, seed=11)
    cat_bytes = [_jpeg(c.image) for c in catalog]
    docs = [
        product(c.id, images.add(f"/{name}/{c.id}.jpg", b, "image/jpeg"))
        for c, b in zip(catalog, cat_bytes, strict=True)
    ]
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert r.json()["errors"] is False, r.text
    index_id = (await api.get(f"/api/v1/indexes/{name}", headers=ADMIN)).json()["indexId"]

    # offline: the decoded images the service saw
    cat_images = [decode_image(b, 10**8) for b in cat_bytes]
    cat_feats = [lf.extract_catalog_features(im) for im in cat_images]
    cat_agg = oe.CatalogAggregates.of(cat_feats)
    # the service's model at the index's precision (its int8 guard decided on the batch above)
    precision = (await api.get(f"/api/v1/indexes/{name}/settings", headers=ADMIN)).json()["inference"]["precision"]
    service_model = api.app.state.services.vision.registry.get(ModelSpec.parse(TEST_MODEL))  # type: ignore[attr-defined]
    model = oe.GlobalModel(TEST_MODEL, service_model, precision)
    cat_emb = oe.embed_many(model, cat_images)
    cat_colours = np.stack([colour.catalog_colour(im) for im in cat_images])
    params = replace(rerank.DEFAULT_PARAMS, pool_size=pool_size, n_crops=4)

    compared = 0
    for q in queries:
        data = _jpeg(q.image)
        url = images.add(f"/{name}/q/{q.id}.jpg", data, "image/jpeg")
        r = await api.post(
            f"/api/v1/indexes/{name}/reverse-image-search",
            json={"q": url, "limit": 10, "attributesToRetrieve": []},
            headers={"x-marqo-index-id": index_id},
        )
        assert r.status_code == 200, r.text
        service = [(h["_id"], h["_score"]) for h in r.json()["hits"]]

        image = decode_image(data, 10**8)
        boxes = crops.query_boxes(image)
        emb_sims = model.embed(crops.crop_images(image, boxes)) @ cat_emb.T
        qf = lf.extract_query_features(image)
        agg_sims = cat_agg.sims(aggregate.box_aggregates(qf, boxes))
        colour_sims = colour.box_colours(image, boxes) @ cat_colours.T
        pool = oe.candidate_pool(emb_sims, agg_sims, cat_agg.present, params, colour_sims)
        keys = rerank.select_for_verification(pool, params)
        vs = lf.verify_candidates(qf, [cat_feats[k] for k in keys])  # type: ignore[index]
        ranked, _ = oe.rerank_pool(pool, dict(zip(keys, vs, strict=True)), params)  # type: ignore[arg-type]
        found = dict(zip(keys, vs, strict=True))
        by_key = {c.product_key: c for c in pool}
        offline = [
            (catalog[k].id, rerank.final_score(replace(by_key[k], verification=found[k]), params)) for k in ranked[:10]
        ]
        # same hits in the same order (halfvec aggregates: scores agree to ~1e-4; a swap only within a near-tie)
        assert len(service) == len(offline)
        for pos, ((sid, sscore), (oid, oscore)) in enumerate(zip(service, offline, strict=True)):
            assert sscore == pytest.approx(oscore, abs=2e-3), (pos, service, offline)
            near = [s for i, s in offline if i == sid]
            assert sid == oid or (near and abs(near[0] - oscore) < 4e-3), (pos, service, offline)
        compared += 1
    assert compared == len(queries)
