"""The colour descriptor (app.vision.colour): deterministic, backdrop-blind, robust to the camera."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from app.samples import wild
from app.storage import indexes as storage_indexes
from app.vision import colour
from app.vision.crops import query_boxes


def _flat(rgb: tuple[int, int, int], backdrop: tuple[int, int, int] = (255, 255, 255), size: int = 320) -> Image.Image:
    """A plain, single-colour product (a rounded body with a small darker badge) on a backdrop."""
    arr = np.full((size, size, 3), backdrop, np.uint8)
    cv2.rectangle(arr, (60, 50), (260, 270), rgb, -1)
    badge = tuple(int(c * 0.5) for c in rgb)
    cv2.circle(arr, (160, 160), 25, badge, -1)
    return Image.fromarray(arr)


def _photo(product: Image.Image, seed: int) -> Image.Image:
    """The product pasted warped onto clutter, re-lit and blurred, through the wild generator."""
    item = wild.CatalogItem("p", product, {}, "p", wild.cutout_from_photo(product))
    image, _ = wild.make_wild_query(item, np.random.default_rng(seed))
    return image


def test_dimensions_match_the_stored_column() -> None:
    assert colour.COLOUR_DIMS == storage_indexes.COLOUR_DIM
    assert colour.catalog_colour(_flat((200, 30, 40))).shape == (storage_indexes.COLOUR_DIM,)


def test_deterministic_and_unit_norm() -> None:
    image = wild.generate_catalog(1, seed=3)[0].image
    a, b = colour.catalog_colour(image), colour.catalog_colour(image.copy())
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    assert (a >= 0).all()  # Hellinger: square roots of bin masses
    boxes = query_boxes(image)
    assert np.array_equal(colour.box_colours(image, boxes), colour.box_colours(image, boxes))


def test_backdrop_is_left_out() -> None:
    """The same product on white and on a light grey backdrop: (nearly) one descriptor; a
    different-coloured product on the same backdrop: a clearly different one."""
    red_white = colour.catalog_colour(_flat((200, 30, 40), (255, 255, 255)))
    red_grey = colour.catalog_colour(_flat((200, 30, 40), (232, 232, 232)))
    blue_white = colour.catalog_colour(_flat((30, 80, 200), (255, 255, 255)))
    assert float(red_white @ red_grey) > 0.97
    assert float(red_white @ blue_white) < 0.3


def test_a_wild_photo_of_a_flat_product_matches_its_own_colours() -> None:
    """Warped onto clutter, with a colour cast, exposure, blur and JPEG: the photo's best crop box
    still matches the product's own colours better than its colourways' (the look-alikes keypoints
    cannot tell apart: a flat body has few of them)."""
    palette = [(200, 30, 40), (30, 80, 200), (40, 150, 60), (240, 205, 40), (120, 50, 160), (20, 140, 140)]
    catalog = np.stack([colour.catalog_colour(_flat(rgb)) for rgb in palette])
    right = 0
    trials = 0
    for i, rgb in enumerate(palette):
        for seed in range(3):
            photo = _photo(_flat(rgb), seed=100 * i + seed)
            scores = (colour.box_colours(photo, query_boxes(photo)) @ catalog.T).max(axis=0)
            right += int(np.argmax(scores) == i)
            trials += 1
    assert right >= 0.8 * trials, (right, trials)


def test_boxes_outside_the_image_or_none_give_empty_rows() -> None:
    image = _flat((200, 30, 40))
    assert colour.box_colours(image, []).shape == (0, colour.COLOUR_DIMS)
    out = colour.box_colours(image, [(0, 0, 320, 320), (400, 400, 500, 500)])
    assert out.shape == (2, colour.COLOUR_DIMS)
    assert abs(float(np.linalg.norm(out[0])) - 1.0) < 1e-5 and not out[1].any()


def test_a_plain_image_without_backdrop_still_has_a_descriptor() -> None:
    """All one colour (no product to tell from the border): every pixel counts, no NaN."""
    d = colour.catalog_colour(Image.new("RGB", (64, 64), (30, 80, 200)))
    assert np.isfinite(d).all() and abs(float(np.linalg.norm(d)) - 1.0) < 1e-5


def test_a_colour_cast_is_undone_by_the_brightest_pixels() -> None:
    """A photo with a white-balance cast (per-channel gains) and a white area in it: its descriptor
    is (nearly) the uncast one, and closer to it than to the product's colourway."""
    product = np.asarray(_flat((40, 150, 60), (240, 240, 240)), np.float32)
    cast = Image.fromarray(np.clip(product * np.array([0.75, 0.9, 1.0], np.float32), 0, 255).astype(np.uint8))
    box = [(0, 0, 320, 320)]
    plain = colour.box_colours(Image.fromarray(product.astype(np.uint8)), box)[0]
    shifted = colour.box_colours(cast, box)[0]
    teal = colour.box_colours(_flat((20, 140, 140), (240, 240, 240)), box)[0]
    assert float(plain @ shifted) > 0.97
    assert float(shifted @ plain) > float(shifted @ teal) + 0.1
