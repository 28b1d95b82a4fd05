"""Local features, geometric verification and query crops (pure vision code, no database)."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.samples import wild
from app.vision import crops
from app.vision import local_features as lf


def _catalog_photo(design: wild.Design) -> tuple[Image.Image, Image.Image]:
    cutout = wild.render_product(design)
    return cutout, wild._catalog_photo(cutout, np.random.default_rng(0))


def _wild_photo(cutout: Image.Image, angle: float = 15.0, area: float = 0.35, seed: int = 0) -> Image.Image:
    """A controlled 'in the wild' photo: textured background, rotation, mild perspective, JPEG 80."""
    rng = np.random.default_rng(seed)
    fw, fh = 640, 480
    frame = wild._background(fh, fw, rng).astype(np.float32)
    cw, ch = cutout.size
    s = min(math.sqrt(area * fw * fh / (cw * ch)), 0.9 * fh / ch, 0.9 * fw / cw)
    H = wild._perspective_homography(cw, ch, s, angle, 0.05, (fw / 2, fh / 2), rng)
    wild._paste_warped(frame, np.asarray(cutout), H)
    buf = io.BytesIO()
    Image.fromarray(frame.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=80)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def scene() -> dict[str, lf.LocalFeatures]:
    design = replace(wild.sample_design(np.random.default_rng(0)), kind="box", pattern="floral", label_style=1)
    # same shape and colours, other pattern, other brand and print: a look-alike, not the product
    other = replace(
        wild.sample_design(np.random.default_rng(100)),
        kind=design.kind,
        base=design.base,
        accent=design.accent,
        label_colour=design.label_colour,
        text_colour=design.text_colour,
        pattern="stripes",
        label_style=1,
    )
    colourway = replace(design, base="green" if design.base != "green" else "red")
    cutout, photo = _catalog_photo(design)
    return {
        "query": lf.extract_query_features(_wild_photo(cutout)),
        "product": lf.extract_catalog_features(photo),
        "look_alike": lf.extract_catalog_features(_catalog_photo(other)[1]),
        "colourway": lf.extract_catalog_features(_catalog_photo(colourway)[1]),
    }


def test_extract_respects_budget_and_frame() -> None:
    img = Image.fromarray((np.random.default_rng(0).random((600, 900, 3)) * 255).astype(np.uint8))
    f = lf.extract_features(img, max_keypoints=100, max_side=300)
    assert 0 < len(f) <= 100
    assert (f.image_width, f.image_height) == (900, 600)
    assert f.keypoints.dtype == np.float32 and f.keypoints.shape == (len(f), 2)
    assert f.descriptors.dtype == np.uint8 and f.descriptors.shape == (len(f), lf.DESCRIPTOR_DIM)
    assert f.colours.dtype == np.uint8 and f.colours.shape == (len(f), 3)
    # coordinates are in the source image's frame, not the downscaled one
    assert f.keypoints[:, 0].max() > 300 and f.keypoints[:, 0].max() < 900


def test_blank_image_has_no_features() -> None:
    f = lf.extract_features(Image.new("RGB", (200, 100), (255, 255, 255)), 500, 512)
    assert len(f) == 0
    assert lf.verify_candidates(f, [f]) == [lf.NO_VERIFICATION]


def test_serialize_round_trip(scene: dict[str, lf.LocalFeatures]) -> None:
    f = scene["product"]
    row = lf.serialize(f)
    assert set(row) == {"algorithm", "keypoint_count", "keypoints", "descriptors", "image_width", "image_height"}
    assert row["keypoint_count"] == len(f) and isinstance(row["keypoints"], bytes)
    assert len(row["descriptors"]) == len(f) * lf.ROW_BYTES
    back = lf.deserialize(row)
    assert back.algorithm == f.algorithm and (back.image_width, back.image_height) == (f.image_width, f.image_height)
    assert np.array_equal(back.keypoints, f.keypoints)
    assert np.array_equal(back.descriptors, f.descriptors)
    assert np.array_equal(back.colours, f.colours)
    # asyncpg hands back bytea as bytes; memoryview-like values work too
    assert len(lf.deserialize({**row, "descriptors": memoryview(row["descriptors"])})) == len(f)


def test_deserialize_rejects_foreign_or_inconsistent_rows(scene: dict[str, lf.LocalFeatures]) -> None:
    row = lf.serialize(scene["product"])
    with pytest.raises(ValueError, match="algorithm"):
        lf.deserialize({**row, "algorithm": "orb"})
    with pytest.raises(ValueError, match="keypoint_count"):
        lf.deserialize({**row, "keypoint_count": row["keypoint_count"] + 1})
    with pytest.raises(ValueError):
        lf.deserialize({**row, "descriptors": row["descriptors"][:-1]})


def test_product_verifies_against_its_wild_photo(scene: dict[str, lf.LocalFeatures]) -> None:
    own, look_alike, colourway = lf.verify_candidates(
        scene["query"], [scene["product"], scene["look_alike"], scene["colourway"]]
    )
    assert own.homography_ok and own.inliers >= 40 and own.colour_agreement > 0.8
    assert own.score > 0.8
    assert look_alike.inliers < 15 and look_alike.inliers * 4 < own.inliers
    # a colourway shares the grey structure; its colours do not agree
    assert colourway.effective_inliers < 0.9 * own.effective_inliers


def test_batched_matches_equal_one_by_one(scene: dict[str, lf.LocalFeatures]) -> None:
    cands = [scene["look_alike"], scene["product"], scene["colourway"], scene["product"]]
    small_chunks = replace(lf.DEFAULT_VERIFY, chunk_keypoints=300)  # forces several chunks with padding
    batched = lf.verify_candidates(scene["query"], cands, small_chunks)
    single = [lf.verify_candidates(scene["query"], [c])[0] for c in cands]
    assert [b.matches for b in batched] == [s.matches for s in single]
    assert [b.homography_ok for b in batched] == [s.homography_ok for s in single]


def _features(xy: np.ndarray, desc: np.ndarray, size: tuple[int, int] = (400, 400)) -> lf.LocalFeatures:
    n = len(xy)
    return lf.LocalFeatures(
        xy.astype(np.float32), desc.astype(np.uint8), np.full((n, 3), 128, np.uint8), size[0], size[1]
    )


def test_many_to_one_matches_do_not_count() -> None:
    """Keypoints piled on one spot (text, flat synthetic art) must not turn into inliers."""
    rng = np.random.default_rng(1)
    desc = rng.integers(0, 60, (60, lf.DESCRIPTOR_DIM))
    catalog = _features(rng.uniform(0, 400, (60, 2)), desc)
    piled = _features(np.tile([[200.0, 200.0]], (60, 1)) + rng.normal(0, 0.3, (60, 2)), desc)
    v = lf.verify_candidates(piled, [catalog])[0]
    assert not v.homography_ok and v.inliers == 0
    assert v.matches < lf.DEFAULT_VERIFY.min_matches


def _repetitive(kind: str, size: int = 400) -> Image.Image:
    img = Image.new("RGB", (size, size), (240, 240, 240))
    d = ImageDraw.Draw(img)
    for i in range(0, size, 20):
        for j in range(0, size, 20):
            if kind == "dots":
                d.ellipse((i + 5, j + 5, i + 13, j + 13), fill=(20, 20, 20))
            elif (i // 20 + j // 20) % 2:
                d.rectangle((i, j, i + 19, j + 19), fill=(30, 30, 120))
    return img


def test_repetitive_images_do_not_verify_against_unrelated_ones() -> None:
    dots = lf.extract_catalog_features(_repetitive("dots"))
    checker = lf.extract_catalog_features(_repetitive("checker"))
    rng = np.random.default_rng(0)
    noise = Image.fromarray(cv2.GaussianBlur((rng.random((480, 640, 3)) * 255).astype(np.uint8), (0, 0), 2))
    for query_img in (_repetitive("checker").rotate(10), noise):
        q = lf.extract_query_features(query_img)
        for v in lf.verify_candidates(q, [dots, checker] if query_img is noise else [dots]):
            assert v.inliers < lf.DEFAULT_VERIFY.min_matches


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array(
        [[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty], [0, 0, 1]]
    )


def test_plausible_homographies_accepted() -> None:
    cat, query = (400, 300), (640, 480)
    assert lf.homography_is_plausible(np.eye(3), cat, query)
    assert lf.homography_is_plausible(_similarity(0.5, 30, 300, 50), cat, query)
    mild = _similarity(0.8, -10, 100, 100) @ np.array([[1, 0, 0], [0, 1, 0], [2e-4, 1e-4, 1]])
    assert lf.homography_is_plausible(mild, cat, query)


@pytest.mark.parametrize(
    "H",
    [
        np.zeros((3, 3)),
        np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1]]),  # rank-deficient: collapses onto a line
        np.diag([-1.0, 1.0, 1.0]) @ _similarity(1, 0, -400, 0),  # mirrored
        _similarity(0.01, 0, 300, 200),  # the whole catalog image onto a few pixels
        _similarity(40, 0, 0, 0),  # absurdly magnified
        np.array([[1.0, 0, 0], [0, 1, 0], [-0.004, 0, 1]]),  # corners behind the camera
        np.array([[1.0, 0, 0], [0, 1, 0], [0.005, 0.005, 1]]),  # extreme foreshortening
        np.array([[8.0, 0, 0], [0, 0.5, 0], [0, 0, 1]]),  # extreme anisotropy
        np.array([[1.0, 0, 0], [0, 1, 0], [np.nan, 0, 1]]),
    ],
)
def test_degenerate_homographies_rejected(H: np.ndarray) -> None:
    assert not lf.homography_is_plausible(H, (400, 300), (640, 480))


def test_colour_agreement_allows_a_cast_not_a_colourway() -> None:
    rng = np.random.default_rng(0)
    cat = rng.integers(30, 220, (50, 3)).astype(np.float32)
    cast = np.clip(cat * np.array([1.15, 1.0, 0.85]) * 0.8, 0, 255)  # white balance + exposure
    assert lf.colour_agreement(cast.astype(np.uint8), cat.astype(np.uint8)) > 0.9
    swapped = cat[:, [2, 0, 1]]  # the same design in other colours
    assert lf.colour_agreement(swapped.astype(np.uint8), cat.astype(np.uint8)) < 0.5


def test_query_crops_whole_first_and_bounded() -> None:
    img = Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8))
    for n in (1, 2, 3, 5, 8):
        out = crops.query_crops(img, n, max_side=None)
        assert 1 <= len(out) <= n
        assert out[0].size == img.size and np.array_equal(np.asarray(out[0]), np.asarray(img))
        assert all(c.width <= img.width and c.height <= img.height and c.width >= 16 for c in out)
    # crops of a large photo are downscaled for the model; the first is still the whole frame
    big = img.resize((2400, 1800))
    small = crops.query_crops(big, 3)
    assert small[0].size == (512, 384) and all(max(c.size) <= 1024 for c in small)
    with pytest.raises(ValueError):
        crops.query_crops(img, 0)


def test_query_crops_find_the_product() -> None:
    """On a plain-ish background the saliency crop sits on the (off-centre) product."""
    img = Image.new("RGB", (640, 480), (120, 130, 125))
    ImageDraw.Draw(img).rectangle((60, 60, 240, 260), fill=(220, 30, 40))
    box = crops.crop_boxes(img, ["saliency"])[0]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert 60 <= cx <= 320 and 40 <= cy <= 300
    assert box[2] - box[0] == box[3] - box[1]  # square: the model's centre crop cuts nothing
