"""The synthetic benchmark generator: deterministic, right shapes, look-alike families, files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.samples import wild


@pytest.fixture(scope="module")
def catalog() -> list[wild.CatalogItem]:
    return wild.generate_catalog(12, seed=3)


def test_catalog_is_deterministic(catalog: list[wild.CatalogItem]) -> None:
    again = wild.generate_catalog(12, seed=3)
    for a, b in zip(catalog, again, strict=True):
        assert a.id == b.id and a.family == b.family and a.metadata == b.metadata
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    other = wild.generate_catalog(12, seed=4)
    pairs = zip(catalog, other, strict=True)
    assert any(not np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in pairs)


def test_catalog_items_have_images_and_metadata(catalog: list[wild.CatalogItem]) -> None:
    assert len({c.id for c in catalog}) == len(catalog)
    for c in catalog:
        assert c.image.mode == "RGB"
        assert 256 <= max(c.image.size) <= 640 and min(c.image.size) >= 256
        assert c.cutout.mode == "RGBA" and max(c.cutout.size) == wild.PRODUCT_SIDE
        md = c.metadata
        assert md["productTitle"] and md["brand"] and md["colour"] in wild.PALETTE
        assert isinstance(md["price"], float) and md["price"] > 0
        assert md["productCollections"] and all(isinstance(x, str) for x in md["productCollections"])
        # a plain (near-white) background: the corners are light
        corners = np.asarray(c.image)[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.mean() > 190


def test_catalog_contains_look_alike_families() -> None:
    items = wild.generate_catalog(40, seed=0)
    families: dict[str, list[wild.CatalogItem]] = {}
    for c in items:
        families.setdefault(c.family, []).append(c)
    multi = [f for f in families.values() if len(f) > 1]
    assert len(multi) >= 5
    for members in multi:
        # same product kind (shape) within a family, but never two identical images
        assert len({m.metadata["kind"] for m in members}) == 1
        arrays = [np.asarray(m.cutout) for m in members]
        assert all(not np.array_equal(arrays[0], a) for a in arrays[1:])


def test_variants_change_what_they_say() -> None:
    rng = np.random.default_rng(0)
    base = wild.sample_design(rng)
    colour = wild.make_variant(base, "colour", rng)
    pattern = wild.make_variant(base, "pattern", rng)
    logo = wild.make_variant(base, "logo", rng)
    assert colour.base != base.base and colour.pattern == base.pattern and colour.kind == base.kind
    assert pattern.pattern != base.pattern and pattern.base == base.base
    assert logo.logo != base.logo and logo.pattern == base.pattern and logo.base == base.base


def test_wild_query_is_deterministic_and_in_range(catalog: list[wild.CatalogItem]) -> None:
    item = catalog[0]
    img1, p1 = wild.make_wild_query(item, np.random.default_rng(7), catalog)
    img2, p2 = wild.make_wild_query(item, np.random.default_rng(7), catalog)
    assert np.array_equal(np.asarray(img1), np.asarray(img2)) and p1 == p2
    assert img1.mode == "RGB" and list(img1.size) == p1["frame"]
    assert 0.15 <= p1["area_fraction"] <= 0.6
    assert 35 <= p1["jpeg_quality"] <= 90
    families = {c.id: c.family for c in catalog}
    assert all(families[o] != item.family for o in p1["other_product_ids"])
    H = np.array(p1["homography_cutout_to_query"])
    assert H.shape == (3, 3)


def test_generate_benchmark_writes_files(tmp_path: Path) -> None:
    catalog, queries = wild.generate_benchmark(5, 4, seed=1, out_dir=tmp_path)
    assert len(catalog) == 5 and len(queries) == 4
    cat_lines = [json.loads(line) for line in (tmp_path / "catalog.jsonl").read_text().splitlines()]
    q_lines = [json.loads(line) for line in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert [c["id"] for c in cat_lines] == [c.id for c in catalog]
    ids = {c.id for c in catalog}
    assert all(q["product_id"] in ids for q in q_lines)
    for row in cat_lines + q_lines:
        assert (tmp_path / row["image"]).stat().st_size > 1000
    # queries are distinct products while there are enough of them
    assert len({q.product_id for q in queries}) == 4
