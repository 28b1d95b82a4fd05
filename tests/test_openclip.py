"""open_clip models: settings, offline random weights, and weights from the hub cache, a local
file or folder, or a clear error, for a CLIP and a SigLIP architecture (saved random state
dicts stand in for downloaded weights; no test touches the network)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from app.config import Settings
from app.vision.embedder import Embedder
from app.vision.model import ModelRegistry, ModelSpec, ModelUnavailableError, load_model
from app.vision.openclip import OFFLINE_OPEN_CLIP_DIM, OFFLINE_OPEN_CLIP_MODEL, OpenClipModel, OpenClipSpec
from tests.helpers import tokenizer_files

# The smallest CLIP and SigLIP configurations open_clip ships (63M and 203M parameters).
SMALL_CLIP = "ViT-S-32"
SMALL_SIGLIP = "ViT-B-16-SigLIP"
SIGLIP_TOKENIZER_REPO = "timm/ViT-B-16-SigLIP"  # its config's hf_tokenizer_name


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = np.zeros((96, 96, 3), np.uint8)
        arr[:] = rng.integers(0, 256, 3)
        x, y = rng.integers(0, 48, 2)
        arr[y : y + 32, x : x + 32] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(arr))
    return out


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every outgoing connection attempt is recorded and refused."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield attempts


@pytest.fixture(scope="module")
def offline_model() -> OpenClipModel:
    model = load_model(ModelSpec.parse(OFFLINE_OPEN_CLIP_MODEL), allow_download=False)
    assert isinstance(model, OpenClipModel)
    return model


# -- settings ------------------------------------------------------------------


def test_spec_forms_round_trip() -> None:
    for value in (
        OFFLINE_OPEN_CLIP_MODEL,
        {"library": "open_clip", "name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
        {"library": "open_clip", "name": "hf-hub:Marqo/marqo-ecommerce-embeddings-B"},
        {"library": "open_clip", "name": "hf-hub:Marqo/marqo-ecommerce-embeddings-L", "pretrained": False},
        {"library": "open_clip", "name": "ViT-B-16-SigLIP", "pretrained": "webli", "seed": 3},
    ):
        spec = ModelSpec.parse(value)
        assert isinstance(spec, OpenClipSpec) and spec.has_text
        assert ModelSpec.parse(spec.to_json()) == spec, value
    assert ModelSpec.parse(OFFLINE_OPEN_CLIP_MODEL).to_json() == OFFLINE_OPEN_CLIP_MODEL
    marqo = ModelSpec.parse({"library": "open_clip", "name": "hf-hub:Marqo/marqo-ecommerce-embeddings-B"})
    assert marqo.to_json()["pretrained"] is True and marqo.is_pretrained
    # timm settings are untouched, and an explicit "library": "timm" means the same
    timm_spec = ModelSpec.parse({"name": "resnet18", "pretrained": False, "imageSize": 32})
    assert not timm_spec.has_text and timm_spec.library == "timm"
    assert ModelSpec.parse({"library": "timm", "name": "resnet18", "pretrained": False, "imageSize": 32}) == timm_spec
    keys = {ModelSpec.parse(v).cache_key for v in (OFFLINE_OPEN_CLIP_MODEL, {**OFFLINE_OPEN_CLIP_MODEL, "seed": 1})}
    assert len(keys) == 2 and ModelSpec.parse(OFFLINE_OPEN_CLIP_MODEL) != ModelSpec("ViT-B-32", False, None, 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"library": "onnx", "name": "x"}, 'model "library" must be one of timm, open_clip'),
        ({"library": "open_clip", "name": "ViT-B-33", "pretrained": False}, "unknown open_clip model 'ViT-B-33'"),
        ({"library": "open_clip", "name": "ViT-B-32", "pretrained": "nope"}, "tags for ViT-B-32: openai"),
        ({"library": "open_clip", "name": "ViT-B-32"}, '"pretrained" must name a tag (openai'),
        ({"library": "open_clip", "name": "hf-hub:Marqo"}, "hf-hub:<org>/<repo>"),
        ({"library": "open_clip", "name": "hf-hub:a/b", "pretrained": "x"}, "carries its own weights"),
        ({"library": "open_clip", "name": "ViT-B-32", "pretrained": False, "imageSize": 64}, "setting imageSize"),
        ({"library": "open_clip", "pretrained": False}, 'needs a "name"'),
        ({"library": "open_clip", "name": "ViT-B-32", "pretrained": False, "seed": -1}, "model seed must be"),
    ],
)
def test_spec_errors(value: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        ModelSpec.parse(value)
    assert message in str(info.value)


# -- the offline model -----------------------------------------------------------


def test_offline_vit_b_32_needs_no_network(no_network: list[object]) -> None:
    model = ModelRegistry(None, allow_download=False).get(ModelSpec.parse({**OFFLINE_OPEN_CLIP_MODEL, "seed": 4}))
    assert isinstance(model, OpenClipModel) and model.has_text
    assert model.embed_texts(["red leather shoe"]).shape == (1, OFFLINE_OPEN_CLIP_DIM)
    assert no_network == []


def test_both_towers_embed_into_one_normalised_space(offline_model: OpenClipModel) -> None:
    assert offline_model.dim == OFFLINE_OPEN_CLIP_DIM
    assert offline_model.input_size == (3, 224, 224)
    images = offline_model.embed(_images(4))
    texts = offline_model.embed_texts(["red leather shoe", "blue shirt", "red leather shoe"])
    assert images.shape == (4, 512) and texts.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    assert float(texts[0] @ texts[1]) < 0.99
    sims = images @ images.T
    assert sims[~np.eye(4, dtype=bool)].max() < 0.99
    # the same seed gives the same vectors
    again = load_model(ModelSpec.parse(OFFLINE_OPEN_CLIP_MODEL), allow_download=False)
    np.testing.assert_allclose(again.embed(_images(2)), offline_model.embed(_images(2)), atol=1e-5)


async def test_embedder_batches_and_caches_texts(offline_model: OpenClipModel) -> None:
    registry = ModelRegistry(None, allow_download=False)
    spec = offline_model.spec
    registry._models[spec.cache_key] = offline_model  # the already-loaded instance
    embedder = Embedder(registry, Settings())
    try:
        texts = [f"product {i}" for i in range(6)]
        results = await asyncio.gather(*(embedder.embed_texts(spec, [t]) for t in texts))
        np.testing.assert_allclose(np.concatenate(results), offline_model.embed_texts(texts), atol=1e-5)
        assert embedder.batches_run < len(texts)  # concurrent queries shared forward passes
        runs = embedder.batches_run
        again = await embedder.embed_texts(spec, ["product 3", "product 1", "product 3"])
        assert embedder.batches_run == runs and embedder.text_cache_hits == 3
        np.testing.assert_allclose(again[0], results[3][0])
        timm_spec = ModelSpec.parse({"name": "resnet10t", "pretrained": False, "imageSize": 32})
        with pytest.raises(ValueError, match="no text tower"):
            await embedder.embed_texts(timm_spec, ["shoe"])
    finally:
        await embedder.aclose()


# -- weights: hub cache, local file or folder, or a clear error ------------------------------


def _blob(cache_root: Path, data_path: Path) -> Path:
    digest = hashlib.sha256()
    with data_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    blob = cache_root / "blobs" / digest.hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    data_path.replace(blob)
    return blob


def put_in_hub_cache(cache: Path, repo: str, files: dict[str, Path | bytes]) -> Path:
    """Files as huggingface_hub keeps them: blobs by hash, snapshot symlinks, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for name, content in files.items():
        if isinstance(content, bytes):
            staged = root / f".staged-{name}"
            staged.write_bytes(content)
            content = staged
        blob = _blob(root, content)
        (snapshot / name).symlink_to(Path("../..") / "blobs" / blob.name)
    return snapshot


def _random_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    import open_clip

    torch.manual_seed(seed)
    module = open_clip.create_model(arch, load_weights=False, pretrained_image=False, pretrained_text=False)
    return {k: v.contiguous() for k, v in module.state_dict().items()}


def _config_json(arch: str, **text_overrides: object) -> bytes:
    import open_clip

    cfg = open_clip.get_model_config(arch)
    cfg["text_cfg"].update(text_overrides)
    return json.dumps({"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}).encode()


def _assert_loaded(model: OpenClipModel, state: dict[str, torch.Tensor]) -> None:
    loaded = model.module.state_dict()
    for key in ("logit_scale", *list(state)[1:4], list(state)[-1]):
        assert torch.equal(loaded[key], state[key]), key


@pytest.mark.parametrize("arch", [SMALL_CLIP, SMALL_SIGLIP])
def test_hf_hub_model_from_the_hub_cache(arch: str, tmp_path: Path, no_network: list[object]) -> None:
    repo = f"lookalike-test/{arch.lower()}"
    state = _random_state(arch, seed=11)
    weights = tmp_path / "open_clip_model.safetensors"
    safetensors.torch.save_file(state, str(weights))
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, repo, {"open_clip_config.json": _config_json(arch), weights.name: weights})
    spec = ModelSpec.parse({"library": "open_clip", "name": f"hf-hub:{repo}"})
    if arch == SMALL_SIGLIP:
        # SigLIP's text tower reads a Hugging Face tokenizer from another repo: missing, it is named
        with pytest.raises(ModelUnavailableError) as info:
            load_model(spec, cache_dir=cache)
        message = str(info.value)
        assert f"Hugging Face tokenizer {SIGLIP_TOKENIZER_REPO}" in message and "HF_HUB_OFFLINE" in message
        assert "lookalike models pull" in message
        put_in_hub_cache(cache, SIGLIP_TOKENIZER_REPO, tokenizer_files(tmp_path / "tok"))
    model = load_model(spec, cache_dir=cache)
    assert isinstance(model, OpenClipModel)
    _assert_loaded(model, state)
    dim = 768 if arch == SMALL_SIGLIP else 384
    assert model.embed(_images(2)).shape == (2, dim)
    assert model.embed_texts(["red shoe", "hat"]).shape == (2, dim)
    assert tuple(model.transform.transforms[-1].mean) == (0.5, 0.5, 0.5)  # the repo's preprocessing
    assert no_network == []


@pytest.mark.parametrize("arch", [SMALL_CLIP, SMALL_SIGLIP])
def test_hf_hub_model_from_local_weights(arch: str, tmp_path: Path, no_network: list[object]) -> None:
    repo = f"lookalike-test/{arch.lower()}"
    state = _random_state(arch, seed=12)
    folder = tmp_path / "weights" / repo.split("/")[1]  # e.g. a `--local-dir` download
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_bytes(_config_json(arch))
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    if arch == SMALL_SIGLIP:
        tokenizer_files(tmp_path / "weights" / SIGLIP_TOKENIZER_REPO.replace("/", "--"))
    spec = ModelSpec.parse({"library": "open_clip", "name": f"hf-hub:{repo}"})
    empty_cache = tmp_path / "hub"
    for weights_path in (tmp_path / "weights", folder / "open_clip_pytorch_model.bin"):
        model = load_model(spec, weights_path, cache_dir=empty_cache)
        assert isinstance(model, OpenClipModel)
        _assert_loaded(model, state)
        assert model.embed_texts(["blue shirt"]).shape == (1, model.dim)
    assert no_network == []


def test_pretrained_tag_from_the_hub_cache(tmp_path: Path, no_network: list[object]) -> None:
    # ViT-B-32 `openai` lives at timm/vit_base_patch32_clip_224.openai (open_clip's pretrained table).
    state = _random_state("ViT-B-32", seed=13)
    weights = tmp_path / "open_clip_model.safetensors"
    safetensors.torch.save_file(state, str(weights))
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "timm/vit_base_patch32_clip_224.openai", {weights.name: weights})
    spec = ModelSpec.parse({"library": "open_clip", "name": "ViT-B-32", "pretrained": "openai"})
    model = load_model(spec, cache_dir=cache)
    assert isinstance(model, OpenClipModel)
    _assert_loaded(model, state)
    assert no_network == []


@pytest.mark.parametrize(
    "value",
    [
        {"library": "open_clip", "name": "hf-hub:Marqo/marqo-ecommerce-embeddings-B"},
        {"library": "open_clip", "name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
        {"library": "open_clip", "name": SMALL_SIGLIP, "pretrained": "webli"},
    ],
)
def test_unavailable_weights_say_how_to_provide_them(
    value: dict[str, Any], tmp_path: Path, no_network: list[object]
) -> None:
    spec = ModelSpec.parse(value)
    for weights_path in (None, tmp_path):  # an empty weights folder falls through to the hub cache
        with pytest.raises(ModelUnavailableError) as info:
            ModelRegistry(weights_path, cache_dir=tmp_path / "hub").get(spec)
        message = str(info.value)
        assert "not available: not in the local cache and HF_HUB_OFFLINE is set" in message
        assert "LOOKALIKE_MODEL_WEIGHTS" in message and "lookalike models pull" in message
        assert '"pretrained": false' in message
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_model(spec, tmp_path / "missing", cache_dir=tmp_path / "hub")
    assert no_network == []


def test_weights_for_another_architecture_are_refused(tmp_path: Path, no_network: list[object]) -> None:
    path = tmp_path / "ViT-B-32.openai.safetensors"
    safetensors.torch.save_file(_random_state(SMALL_CLIP, seed=1), str(path))
    spec = ModelSpec.parse({"library": "open_clip", "name": "ViT-B-32", "pretrained": "openai"})
    with pytest.raises(ModelUnavailableError, match="could not load weights for model ViT-B-32.openai"):
        load_model(spec, tmp_path, cache_dir=tmp_path / "hub")


def test_random_siglip_still_needs_its_tokenizer(tmp_path: Path, no_network: list[object]) -> None:
    spec = ModelSpec.parse({"library": "open_clip", "name": SMALL_SIGLIP, "pretrained": False})
    with pytest.raises(ModelUnavailableError) as info:
        load_model(spec, cache_dir=tmp_path / "hub")
    assert f"Hugging Face tokenizer {SIGLIP_TOKENIZER_REPO}, which is not available" in str(info.value)
    put_in_hub_cache(tmp_path / "hub", SIGLIP_TOKENIZER_REPO, tokenizer_files(tmp_path / "tok"))
    model = load_model(spec, cache_dir=tmp_path / "hub")
    assert model.embed_texts(["green wool hat"]).shape == (1, 768)
    assert no_network == []


def test_models_pull_takes_a_json_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    from app.cli import main

    monkeypatch.delenv("LOOKALIKE_MODEL_WEIGHTS", raising=False)
    assert main(["models", "pull", json.dumps(OFFLINE_OPEN_CLIP_MODEL)]) == 0
    assert "ViT-B-32: ready (512-d embeddings, text tower)" in capsys.readouterr().out
    marqo = {"library": "open_clip", "name": "hf-hub:Marqo/marqo-ecommerce-embeddings-B"}
    assert main(["models", "pull", json.dumps(marqo)]) == 1  # not cached here, and HF_HUB_OFFLINE
    assert "LOOKALIKE_MODEL_WEIGHTS" in capsys.readouterr().err
    assert main(["models", "pull", '{"library": "open_clip", "name": "ViT-B-99"}']) == 2
    assert "unknown open_clip model" in capsys.readouterr().err
    assert no_network == []
