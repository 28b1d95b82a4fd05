"""ModelSpec, EmbeddingModel, ModelRegistry and Embedder, with offline random-weight models."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from app.config import Settings
from app.errors import ImageError
from app.vision import model as model_mod
from app.vision.embedder import Embedder
from app.vision.model import (
    DEFAULT_MODEL,
    OFFLINE_TEST_MODEL,
    OFFLINE_TEST_MODEL_DIM,
    EmbeddingModel,
    ModelRegistry,
    ModelSpec,
    ModelUnavailableError,
)

TEST_SPEC = ModelSpec.parse(OFFLINE_TEST_MODEL)
# The same architecture and size under a pretrained tag, for weights-file tests.
PRETRAINED_TINY = ModelSpec.parse({"name": "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "imageSize": 64})


def _images(n: int, size: int = 80, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = np.zeros((size, size, 3), np.uint8)
        arr[:] = rng.integers(0, 256, 3)
        x, y = rng.integers(0, size // 2, 2)
        arr[y : y + size // 3, x : x + size // 3] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(arr))
    return out


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(None, allow_download=False)


@pytest.fixture(scope="module")
def test_model(registry: ModelRegistry) -> EmbeddingModel:
    return registry.get(TEST_SPEC)


# -- ModelSpec -----------------------------------------------------------------


def test_default_spec() -> None:
    assert ModelSpec.parse(None) == DEFAULT_MODEL
    assert DEFAULT_MODEL.timm_name == "vit_small_patch14_dinov2.lvd142m"
    assert DEFAULT_MODEL.image_size == 224
    assert DEFAULT_MODEL.is_pretrained


def test_spec_forms_round_trip() -> None:
    for value in (
        None,
        "resnet18",
        "resnet18.tv_in1k",
        OFFLINE_TEST_MODEL,
        {"name": "resnet18", "pretrained": "gluon_in1k"},
        {"name": "vit_small_patch14_dinov2", "pretrained": False, "imageSize": 224, "seed": 7},
    ):
        spec = ModelSpec.parse(value)
        assert ModelSpec.parse(spec.to_json()) == spec, value
    # The default tag is pinned at parse time.
    assert ModelSpec.parse("resnet18").pretrained == "a1_in1k"
    assert ModelSpec.parse("resnet18").image_size == 224
    assert TEST_SPEC == ModelSpec("vit_tiny_patch16_224", False, 64, 0)
    assert TEST_SPEC.to_json() == OFFLINE_TEST_MODEL


def test_cache_keys_tell_vectors_apart() -> None:
    keys = {
        ModelSpec.parse(v).cache_key
        for v in (
            OFFLINE_TEST_MODEL,
            {**OFFLINE_TEST_MODEL, "seed": 1},
            {**OFFLINE_TEST_MODEL, "imageSize": 96},
            "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        )
    }
    assert len(keys) == 4


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("resnt18", "unknown timm model 'resnt18' (did you mean resnet18"),
        ("resnet18.nope", "timm has no pretrained weights resnet18.nope; tags for resnet18: a1_in1k"),
        (
            {"name": "resnet18.a1_in1k", "pretrained": False},
            'names pretrained weights but "pretrained" is false',
        ),
        ({"pretrained": False}, 'model object needs a "name"'),
        ({"name": 5}, "model name must be a string"),
        ({"name": "resnet18", "pretrained": "yes please", "x": 1}, "unknown model setting x"),
        ({"name": "resnet18", "pretrained": None}, '"pretrained" must be true, false or a tag string'),
        ({"name": "resnet18", "pretrained": False, "imageSize": "64"}, "model imageSize must be an integer"),
        ({"name": "resnet18", "pretrained": False, "imageSize": True}, "model imageSize must be an integer"),
        ({"name": "resnet18", "pretrained": False, "imageSize": 4096}, "between 16 and 1024"),
        ({"name": "resnet18", "pretrained": False, "seed": -1}, "model seed must be between"),
        ("", "model name is empty"),
        (42, "model must be a timm model name or an object, got int"),
    ],
)
def test_spec_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        ModelSpec.parse(value)  # type: ignore[arg-type]
    assert message in str(info.value)


# -- EmbeddingModel ------------------------------------------------------------


def test_offline_test_model(test_model: EmbeddingModel) -> None:
    assert test_model.dim == OFFLINE_TEST_MODEL_DIM == 192
    vectors = test_model.embed(_images(5))
    assert vectors.shape == (5, 192)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Distinct images get distinct vectors; a JPEG'd copy stays nearest its original.
    sims = vectors @ vectors.T
    assert sims[~np.eye(5, dtype=bool)].max() < 0.99
    assert test_model.embed([]).shape == (0, 192)


def test_same_seed_same_vectors(test_model: EmbeddingModel) -> None:
    images = _images(3)
    # Two independent instances, loaded concurrently (the seeded init must not interleave).
    loaded: dict[int, EmbeddingModel] = {}

    def load(seed: int) -> None:
        loaded[seed] = EmbeddingModel.load(dataclasses.replace(TEST_SPEC, seed=seed))

    threads = [threading.Thread(target=load, args=(seed,)) for seed in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(loaded[0].embed(images), test_model.embed(images), atol=1e-5)
    assert np.abs(loaded[1].embed(images) - test_model.embed(images)).max() > 0.1


def test_seeding_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    EmbeddingModel.load(TEST_SPEC)
    assert torch.equal(torch.rand(3), expected)


def test_cnn_without_img_size_argument() -> None:
    model = EmbeddingModel.load(ModelSpec.parse({"name": "resnet10t", "pretrained": False, "imageSize": 32}))
    assert model.dim == 512
    assert model.input_size == (3, 32, 32)
    assert model.embed(_images(2)).shape == (2, 512)


@pytest.fixture()
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the hub at a closed loopback port: any network attempt fails at once, never leaves the host."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    yield


def _assert_how_to(message: str, name: str) -> None:
    assert f"weights for model {name} are not available" in message
    assert f"LOOKALIKE_MODEL_WEIGHTS=/path/to/{name}.safetensors" in message
    assert f"lookalike models pull {name}" in message
    assert '"pretrained": false' in message


def test_pretrained_without_weights_fails_fast_with_how_to(offline_hub: None, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        EmbeddingModel.load(DEFAULT_MODEL, None, cache_dir=tmp_path)
    assert time.monotonic() - started < 10
    _assert_how_to(str(info.value), "vit_small_patch14_dinov2.lvd142m")
    assert "is unreachable" in str(info.value)


def test_hf_hub_offline_is_respected(offline_hub: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as info:
        EmbeddingModel.load(DEFAULT_MODEL, None, cache_dir=tmp_path)
    assert "HF_HUB_OFFLINE is set" in str(info.value)
    with pytest.raises(ModelUnavailableError, match="downloads are disabled"):
        ModelRegistry(None, cache_dir=tmp_path, allow_download=False).get(PRETRAINED_TINY)


def _save_random_tiny(path: Path, seed: int = 5) -> EmbeddingModel:
    source = EmbeddingModel.load(dataclasses.replace(TEST_SPEC, seed=seed))
    state = {k: v.contiguous() for k, v in source.module.state_dict().items()}
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    return source


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_from_local_file(tmp_path: Path, offline_hub: None, suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    source = _save_random_tiny(path)
    loaded = EmbeddingModel.load(PRETRAINED_TINY, path, cache_dir=tmp_path)
    images = _images(4)
    np.testing.assert_allclose(loaded.embed(images), source.embed(images), atol=1e-5)


def test_weights_at_another_resolution_are_resampled(tmp_path: Path, offline_hub: None) -> None:
    # Hub checkpoints come at their native size (DINOv2: 518 px); the index runs the
    # model at its own size, so timm's checkpoint filter resamples position embeddings.
    native = EmbeddingModel.load(ModelSpec.parse({"name": "vit_tiny_patch16_224", "pretrained": False, "seed": 3}))
    path = tmp_path / "native.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in native.module.state_dict().items()}, str(path))
    loaded = EmbeddingModel.load(PRETRAINED_TINY, path, cache_dir=tmp_path)
    assert native.input_size == (3, 224, 224) and loaded.input_size == (3, 64, 64)
    src, dst = native.module.state_dict(), loaded.module.state_dict()
    assert src["pos_embed"].shape != dst["pos_embed"].shape
    assert torch.equal(src["blocks.5.mlp.fc1.weight"], dst["blocks.5.mlp.fc1.weight"])


def test_weights_directory_by_model_name(tmp_path: Path, offline_hub: None) -> None:
    source = _save_random_tiny(tmp_path / f"{PRETRAINED_TINY.timm_name}.safetensors")
    loaded = ModelRegistry(tmp_path, cache_dir=tmp_path).get(PRETRAINED_TINY)
    images = _images(2)
    np.testing.assert_allclose(loaded.embed(images), source.embed(images), atol=1e-5)
    # A directory without this model's file falls through to the hub, with the how-to.
    with pytest.raises(ModelUnavailableError) as info:
        EmbeddingModel.load(DEFAULT_MODEL, tmp_path, cache_dir=tmp_path)
    _assert_how_to(str(info.value), DEFAULT_MODEL.timm_name)


def test_weights_file_for_another_model_is_refused(tmp_path: Path, offline_hub: None) -> None:
    other = EmbeddingModel.load(ModelSpec.parse({"name": "resnet10t", "pretrained": False, "imageSize": 32}))
    path = tmp_path / "resnet.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in other.module.state_dict().items()}, str(path))
    with pytest.raises(ModelUnavailableError) as info:
        EmbeddingModel.load(PRETRAINED_TINY, path, cache_dir=tmp_path)
    assert "does not fit model vit_tiny_patch16_224.augreg_in21k_ft_in1k" in str(info.value)
    assert "left at random initialisation" in str(info.value)


def test_missing_weights_path(tmp_path: Path, offline_hub: None) -> None:
    with pytest.raises(ModelUnavailableError, match="LOOKALIKE_MODEL_WEIGHTS is .*nope.safetensors, which does not"):
        EmbeddingModel.load(PRETRAINED_TINY, tmp_path / "nope.safetensors", cache_dir=tmp_path)


def test_corrupt_weights_file(tmp_path: Path, offline_hub: None) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"definitely not safetensors")
    with pytest.raises(ModelUnavailableError, match="could not load weights for model"):
        EmbeddingModel.load(PRETRAINED_TINY, path, cache_dir=tmp_path)


# -- ModelRegistry -------------------------------------------------------------


def test_registry_loads_each_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[ModelSpec] = []
    real_load = EmbeddingModel.load

    def counting_load(spec: ModelSpec, *args: object, **kwargs: object) -> EmbeddingModel:
        calls.append(spec)
        time.sleep(0.05)  # widen the race window
        return real_load(spec, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model_mod.EmbeddingModel, "load", staticmethod(counting_load))
    registry = ModelRegistry(None)
    results: list[EmbeddingModel] = []
    threads = [threading.Thread(target=lambda: results.append(registry.get(TEST_SPEC))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert all(r is results[0] for r in results)
    assert registry.get(ModelSpec.parse(OFFLINE_TEST_MODEL)) is results[0]
    assert registry.loaded() == [TEST_SPEC]


# -- Embedder ------------------------------------------------------------------


def _embedder(registry: ModelRegistry, **overrides: object) -> Embedder:
    settings = dataclasses.replace(Settings(), **{"embed_batch_size": 8, "cpu_workers": 2, **overrides})  # type: ignore[arg-type]
    return Embedder(registry, settings)


async def test_embedder_matches_the_model(registry: ModelRegistry, test_model: EmbeddingModel) -> None:
    embedder = _embedder(registry)
    try:
        images = _images(19)  # more than one batch of 8: split, then reassembled in order
        got = await embedder.embed(TEST_SPEC, images)
        np.testing.assert_allclose(got, test_model.embed(images), atol=1e-5)
        empty = await embedder.embed(TEST_SPEC, [])
        assert empty.shape == (0, 192)
        assert embedder.queue_depth == 0
    finally:
        await embedder.aclose()


async def test_concurrent_requests_are_micro_batched(registry: ModelRegistry, test_model: EmbeddingModel) -> None:
    embedder = _embedder(registry, embed_batch_size=16)
    try:
        images = _images(40, seed=3)
        await embedder.embed(TEST_SPEC, images[:1])  # warm up the worker
        before = embedder.batches_run
        depths: list[int] = []

        async def watch() -> None:
            while True:
                depths.append(embedder.queue_depth)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(embedder.embed(TEST_SPEC, [img]) for img in images))
        watcher.cancel()
        expected = test_model.embed(images)
        for i, row in enumerate(results):
            assert row.shape == (1, 192)
            np.testing.assert_allclose(row[0], expected[i], atol=1e-5)
        batches = embedder.batches_run - before
        assert batches < len(images) // 2, batches  # 40 single-image calls, far fewer forward passes
        assert max(depths) > 1
        assert embedder.queue_depth == 0
    finally:
        await embedder.aclose()


async def test_event_loop_stays_responsive(registry: ModelRegistry) -> None:
    # One forward pass over 256 images: on the loop it would stall every tick for its
    # whole duration; off the loop the ticks keep coming.
    embedder = _embedder(registry, embed_batch_size=256)
    try:
        await embedder.embed(TEST_SPEC, _images(1))
        images = _images(256, seed=4)
        lags: list[float] = []
        done = False

        async def tick() -> None:
            while not done:
                start = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - start - 0.01)

        ticker = asyncio.create_task(tick())
        started = time.perf_counter()
        out = await embedder.embed(TEST_SPEC, images)
        elapsed = time.perf_counter() - started
        done = True
        await ticker
        assert out.shape == (256, 192)
        assert embedder.batches_run == 2  # the warm-up and one big batch
        assert len(lags) >= elapsed / 0.03, (len(lags), elapsed)  # it kept ticking throughout
        # Generous for loaded CI machines (typically ~10 ms), far below a stalled loop.
        assert max(lags) < min(0.25, elapsed / 3), (max(lags), elapsed)
    finally:
        await embedder.aclose()


async def test_embedder_errors_and_cancellation(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = _embedder(registry)
    try:
        model = await embedder.load_model(TEST_SPEC)
        real = model.embed_tensor

        def broken(batch: torch.Tensor, precision: str = "fp32") -> np.ndarray:
            raise RuntimeError("boom")

        monkeypatch.setattr(model, "embed_tensor", broken)
        with pytest.raises(RuntimeError, match="boom"):
            await embedder.embed(TEST_SPEC, _images(2))
        monkeypatch.setattr(model, "embed_tensor", real)
        # A cancelled caller does not wedge the worker.
        task = asyncio.create_task(embedder.embed(TEST_SPEC, _images(8)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await embedder.embed(TEST_SPEC, _images(3))).shape == (3, 192)
        assert embedder.queue_depth == 0
    finally:
        await embedder.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await embedder.embed(TEST_SPEC, _images(1))


async def test_admission_is_bounded_without_deadlock(registry: ModelRegistry) -> None:
    embedder = _embedder(registry, embed_batch_size=4)  # at most 32 images admitted
    try:
        images = _images(10, seed=5)
        depths: list[int] = []

        async def watch() -> None:
            while True:
                depths.append(embedder.queue_depth)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        results = await asyncio.wait_for(
            asyncio.gather(*(embedder.embed(TEST_SPEC, images) for _ in range(12))), timeout=60
        )
        watcher.cancel()
        assert all(r.shape == (10, 192) for r in results)
        assert max(depths) <= 32
        assert embedder.queue_depth == 0
    finally:
        await embedder.aclose()


async def test_close_releases_waiting_callers(registry: ModelRegistry) -> None:
    embedder = _embedder(registry, embed_batch_size=2)
    await embedder.embed(TEST_SPEC, _images(1))
    tasks = [asyncio.create_task(embedder.embed(TEST_SPEC, _images(2, seed=i))) for i in range(6)]
    for _ in range(5000):  # until all six are admitted
        if embedder.queue_depth >= 12:
            break
        await asyncio.sleep(0.001)
    embedder.close()
    done, pending = await asyncio.wait(tasks, timeout=10)
    assert not pending  # every caller finished (result or cancellation), none hangs
    await embedder.aclose()


async def test_embedder_decode(registry: ModelRegistry) -> None:
    import io

    embedder = _embedder(registry, max_image_pixels=10_000)
    try:
        buf = io.BytesIO()
        Image.new("RGBA", (20, 10), (0, 0, 0, 0)).save(buf, "PNG")
        img = await embedder.decode(buf.getvalue())
        assert img.mode == "RGB" and img.size == (20, 10)
        buf = io.BytesIO()
        Image.new("RGB", (200, 200)).save(buf, "PNG")
        with pytest.raises(ImageError, match="over the limit of 10000"):
            await embedder.decode(buf.getvalue())
    finally:
        embedder.close()
