"""The local-feature aggregate (VLAD + whitened PCA) that retrieves reverse-search candidates."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.samples import wild
from app.storage import indexes as storage_indexes
from app.vision import aggregate, crops
from app.vision import local_features as lf


@pytest.fixture(scope="module")
def bench() -> tuple[list[wild.CatalogItem], list[wild.WildQuery]]:
    catalog = wild.generate_catalog(40, seed=3)
    return catalog, wild.generate_queries(catalog, 12, seed=3)


def test_vocabulary_is_packaged_and_consistent() -> None:
    voc = aggregate.vocabulary()
    assert voc.words == 64
    assert voc.projection_t.shape == (64 * lf.DESCRIPTOR_DIM, aggregate.AGGREGATE_DIM)
    assert voc.version.startswith("vlad64-pca512-")
    # the SQL column is declared with the same dimension
    assert storage_indexes.AGGREGATE_DIM == aggregate.AGGREGATE_DIM


def test_aggregate_is_unit_norm_and_none_without_keypoints() -> None:
    blank = lf.extract_catalog_features(Image.new("RGB", (200, 200), (128, 128, 128)))
    assert aggregate.image_aggregate(blank) is None
    assert aggregate.box_aggregates(blank, [(0, 0, 200, 200)]).shape == (0, aggregate.AGGREGATE_DIM)


def test_boxes_with_too_few_keypoints_are_left_out(bench: tuple[list[wild.CatalogItem], list[wild.WildQuery]]) -> None:
    features = lf.extract_query_features(bench[1][0].image)
    w, h = features.image_width, features.image_height
    out = aggregate.box_aggregates(features, [(0, 0, w, h), (0, 0, 1, 1)])
    assert out.shape == (1, aggregate.AGGREGATE_DIM)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)


def test_wild_photos_are_closest_to_their_own_product(
    bench: tuple[list[wild.CatalogItem], list[wild.WildQuery]],
) -> None:
    """Crop-box aggregates rank the photographed product far above chance among 40 products."""
    catalog, queries = bench
    vectors = np.stack([aggregate.image_aggregate(lf.extract_catalog_features(c.image)) for c in catalog])
    ids = [c.id for c in catalog]
    ranks = []
    for q in queries:
        features = lf.extract_query_features(q.image)
        boxes = crops.query_boxes(q.image)
        sims = (aggregate.box_aggregates(features, boxes) @ vectors.T).max(axis=0)
        order = list(np.argsort(-sims))
        ranks.append(order.index(ids.index(q.product_id)))
    # chance: median rank ~20 of 40, top-5 ~1 in 8
    assert np.median(ranks) <= 3
    assert sum(r < 5 for r in ranks) >= len(ranks) // 2
