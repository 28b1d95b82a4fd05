"""timm image models: the per-index model setting, loading weights, and embedding.

`ModelSpec` is the index's `model` setting (SPEC "Index management"):

- absent/None: the default, DINOv2 ViT-S/14 (`vit_small_patch14_dinov2.lvd142m`)
  run at 224 px, 384-d;
- a string `"arch.tag"` or `"arch"`: that timm model with pretrained weights
  (the default tag is pinned at parse time, so a later timm release changing its
  default cannot silently change an index's vectors);
- an object `{"name", "pretrained", "imageSize", "seed"}`; `"pretrained": false`
  gives deterministic random weights from `seed`, the documented way to run
  fully offline (tests, benchmarks, air-gapped demos; quality is a lower bound).

Pretrained weights come from `LOOKALIKE_MODEL_WEIGHTS` (a file, or a directory
of `<arch>.<tag>.safetensors` files) or the Hugging Face hub cache, downloading
only when the hub is reachable. When they cannot be had, `ModelUnavailableError`
says how to provide them; random weights are never substituted silently.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import timm
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image

from app.vision.backend import (
    ExportCancelledError,
    GraphCache,
    GraphFiles,
    OnnxRunner,
    OpenVinoRunner,
    Runner,
    cuda_provider_available,
    faster_fp32_runner,
    openvino_installed,
)

log = logging.getLogger("lookalike.models")

DEFAULT_ARCH = "vit_small_patch14_dinov2"
DEFAULT_TAG = "lvd142m"
DEFAULT_IMAGE_SIZE = 224
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024

# The model the test suite and offline benchmarks use: a random-weight ViT-Tiny
# at 64 px. 192-d, about 140 images/s single and 650 images/s in batches of 32 on
# 2 CPU cores, and (unlike random DINOv2, whose LayerScale makes every output
# nearly identical) it spreads distinct images apart and keeps a JPEG'd, resized
# copy nearest to its original.
OFFLINE_TEST_MODEL: dict[str, Any] = {
    "name": "vit_tiny_patch16_224",
    "pretrained": False,
    "imageSize": 64,
    "seed": 0,
}
OFFLINE_TEST_MODEL_DIM = 192

# Batch sizes `EmbeddingModel.best_batch_size` tries (capped by LOOKALIKE_EMBED_BATCH_SIZE).
BATCH_CANDIDATES = (1, 4, 16, 32)
_SPEC_KEYS = ("name", "pretrained", "imageSize", "seed")
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_HUB_PROBE_TIMEOUT_S = 3.0


class ModelUnavailableError(Exception):
    """Pretrained weights cannot be had; the message says how to provide them."""


def _suggest(arch: str) -> str:
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _check_int(value: object, what: str, lo: int, hi: int) -> int:
    # bool is an int subclass; `"imageSize": true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be between {lo} and {hi}, got {value}")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """Which timm model embeds an index's images, and how.

    `name` is the timm architecture (no tag). `pretrained` is False for seeded
    random weights, a tag string for those pretrained weights, or True for
    timm's default tag (`parse` replaces True by the concrete tag). `image_size`
    None means the weights' native input size.
    """

    name: str
    pretrained: bool | str = True
    image_size: int | None = None
    seed: int = 0

    library: ClassVar[str] = "timm"
    has_text: ClassVar[bool] = False  # timm models embed images only

    @property
    def tag(self) -> str | None:
        return self.pretrained if isinstance(self.pretrained, str) else None

    @property
    def is_pretrained(self) -> bool:
        return self.pretrained is not False

    @property
    def timm_name(self) -> str:
        """The name for timm.create_model: `arch.tag` for pretrained weights, else `arch`."""
        return f"{self.name}.{self.tag}" if self.tag else self.name

    @property
    def cache_key(self) -> str:
        """A stable string identifying the vectors this spec produces."""
        size = self.image_size if self.image_size is not None else "native"
        if self.is_pretrained:
            return f"{self.timm_name}@{size}"
        return f"{self.name}+random{self.seed}@{size}"

    def to_json(self) -> dict[str, Any]:
        """The index `model` setting; `ModelSpec.parse(spec.to_json()) == spec`."""
        out: dict[str, Any] = {"name": self.timm_name, "pretrained": self.is_pretrained}
        if self.image_size is not None:
            out["imageSize"] = self.image_size
        out["seed"] = self.seed
        return out

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | None) -> ModelSpec:
        """Validate a `model` setting (None, "arch[.tag]", or an object); ValueError says what is wrong."""
        if value is None:
            return DEFAULT_MODEL
        if isinstance(value, str):
            return cls._build(value, True, None, 0)
        if isinstance(value, Mapping) and value.get("library", "timm") != "timm":
            return _parse_other_library(value)
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k != "library"}
            unknown = sorted(str(k) for k in value if k not in _SPEC_KEYS)
            if unknown:
                raise ValueError(f"unknown model setting {', '.join(unknown)}; allowed: {', '.join(_SPEC_KEYS)}")
            if "name" not in value:
                raise ValueError('model object needs a "name" (a timm model name)')
            name = value["name"]
            if not isinstance(name, str):
                raise ValueError(f"model name must be a string, got {name!r}")
            pretrained = value.get("pretrained", True)
            if not isinstance(pretrained, bool | str):
                raise ValueError(f'model "pretrained" must be true, false or a tag string, got {pretrained!r}')
            size = value.get("imageSize")
            if size is not None:
                size = _check_int(size, "model imageSize", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
            seed = _check_int(value.get("seed", 0), "model seed", 0, 2**63 - 1)
            return cls._build(name, pretrained, size, seed)
        raise ValueError(f"model must be a timm model name or an object, got {type(value).__name__}")

    @classmethod
    def _build(cls, name: str, pretrained: bool | str, image_size: int | None, seed: int) -> ModelSpec:
        name = name.strip()
        if not name:
            raise ValueError("model name is empty")
        arch, _, tag = name.partition(".")
        if not timm.is_model(arch):
            raise ValueError(f"unknown timm model {arch!r}{_suggest(arch)}")
        if isinstance(pretrained, str):
            if tag and tag != pretrained:
                raise ValueError(f"model name {name!r} and pretrained tag {pretrained!r} disagree")
            tag = pretrained.strip()
            if not tag:
                raise ValueError("model pretrained tag is empty")
            pretrained = True
        if not pretrained:
            if tag:
                raise ValueError(
                    f'model {name!r} names pretrained weights but "pretrained" is false; '
                    f"use the name {arch!r} for random weights"
                )
            cfg = timm.models.get_pretrained_cfg(arch)
            size = image_size or (cfg.input_size[-1] if cfg is not None else DEFAULT_IMAGE_SIZE)
            return cls(arch, False, size, seed)
        try:
            cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch, allow_unregistered=False)
        except RuntimeError:
            cfg = None
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
            if tags:
                raise ValueError(f"timm has no pretrained weights {arch}.{tag}; tags for {arch}: {', '.join(tags)}")
            raise ValueError(
                f'timm has no pretrained weights for {arch}; use {{"name": "{arch}", "pretrained": false}} '
                "for random weights"
            )
        return cls(arch, cfg.tag or tag or True, image_size or cfg.input_size[-1], seed)


DEFAULT_MODEL = ModelSpec(DEFAULT_ARCH, DEFAULT_TAG, DEFAULT_IMAGE_SIZE, 0)
LIBRARIES = ("timm", "open_clip")


def _parse_other_library(value: Mapping[str, Any]) -> ModelSpec:
    library = value.get("library")
    if library == "open_clip":
        from app.vision import openclip

        return openclip.parse_spec(value)
    raise ValueError(f'model "library" must be one of {", ".join(LIBRARIES)}, got {library!r}')


# -- weights -------------------------------------------------------------------


def _hub_offline() -> bool:
    from huggingface_hub import constants

    raw = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or raw in ("1", "true", "yes", "on")


def _hub_unreachable_reason() -> str | None:
    """Why the hub cannot be reached right now, or None. Fails in seconds, not minutes.

    huggingface_hub retries a dead network five times with back-off (about 25 s
    here); a quick TCP probe first keeps index creation on an offline machine
    from hanging. With a proxy configured the probe would be meaningless, so
    then the download is simply attempted.
    """
    if _hub_offline():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host} is unreachable ({exc.strerror or exc})"
    return None


def _hub_filenames(cfg: Any) -> list[str]:
    name = getattr(cfg, "hf_hub_filename", None)
    if name:
        # timm prefers a safetensors twin of a .bin file when the repo has one.
        if name.endswith("pytorch_model.bin"):
            return [name[: -len("pytorch_model.bin")] + "model.safetensors", name]
        return [name]
    return ["model.safetensors", "pytorch_model.bin"]


def _how_to(spec: ModelSpec, hub_id: str | None) -> str:
    where = f" (model.safetensors from https://huggingface.co/{hub_id})" if hub_id else ""
    return (
        f"To provide them: set LOOKALIKE_MODEL_WEIGHTS=/path/to/{spec.timm_name}.safetensors{where}; "
        f"or run `lookalike models pull {spec.timm_name}` on a machine with internet access and copy its "
        f"Hugging Face cache (HF_HOME) here; or, for offline tests and demos only, use random weights: "
        f'{{"name": "{spec.name}", "pretrained": false, "imageSize": 64, "seed": 0}}.'
    )


def _weights_in(directory: Path, spec: ModelSpec) -> Path | None:
    for stem in dict.fromkeys((spec.timm_name, spec.name)):
        for suffix in _WEIGHT_SUFFIXES:
            for candidate in (directory / f"{stem}{suffix}", directory / stem / f"model{suffix}"):
                if candidate.is_file():
                    return candidate
        hub_layout = directory / stem / "pytorch_model.bin"
        if hub_layout.is_file():
            return hub_layout
    return None


def locate_weights(
    spec: ModelSpec,
    weights_path: Path | None = None,
    *,
    cache_dir: Path | None = None,
    allow_download: bool = True,
) -> Path:
    """The local weights file for a pretrained spec, downloading into the hub cache if allowed."""
    assert spec.is_pretrained
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if path.is_file():
            return path
        if not path.exists():
            raise ModelUnavailableError(
                f"LOOKALIKE_MODEL_WEIGHTS is {path}, which does not exist. {_how_to(spec, hub_id)}"
            )
        found = _weights_in(path, spec)
        if found is not None:
            return found
    if not hub_id:
        raise ModelUnavailableError(
            f"weights for model {spec.timm_name} are not on the Hugging Face hub. {_how_to(spec, None)}"
        )
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    filenames = _hub_filenames(cfg)
    for filename in filenames:
        cached = try_to_load_from_cache(hub_id, filename, cache_dir=cache_dir)
        if isinstance(cached, str):
            return Path(cached)
    reason = "downloads are disabled" if not allow_download else _hub_unreachable_reason()
    if reason is None:
        errors: list[str] = []
        for filename in filenames:
            try:
                return Path(hf_hub_download(hub_id, filename, cache_dir=cache_dir))
            except Exception as exc:  # hub errors come in many types; each is "not available"
                errors.append(f"{filename}: {exc}".splitlines()[0])
        reason = "; ".join(errors)
    raise ModelUnavailableError(
        f"weights for model {spec.timm_name} are not available: not in the local cache and {reason}. "
        f"{_how_to(spec, hub_id)}"
    )


# -- the model -----------------------------------------------------------------


# timm initialises weights from torch's global RNG: two threads seeding and
# drawing at once would interleave and make "deterministic" weights random.
_CREATE_LOCK = threading.Lock()


def _create(spec: ModelSpec, **kwargs: Any) -> torch.nn.Module:
    """timm.create_model with the spec's image size where the architecture takes one, seeded.

    Random weights are a function of (architecture, image size, seed) for a given
    torch + timm version; upgrading either may change them (re-embed such indexes).
    """
    name = spec.timm_name if kwargs.get("pretrained") else spec.name
    # fork_rng: seeding must not disturb the process's RNG (devices=[]: CPU state only).
    with _CREATE_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if spec.image_size is not None:
            try:
                return timm.create_model(name, num_classes=0, img_size=spec.image_size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
                torch.manual_seed(spec.seed)  # CNNs take any input size and no img_size argument
        return timm.create_model(name, num_classes=0, **kwargs)


def _unchanged_fraction(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    """Share of parameters (by count) identical to a same-seed random init: near 1 if nothing loaded."""
    ref = reference.state_dict()
    same = total = 0
    for key, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        total += tensor.numel()
        other = ref.get(key)
        if other is not None and other.shape == tensor.shape and torch.equal(other, tensor):
            same += tensor.numel()
    return same / total if total else 0.0


def _numpy_tail(transform: Callable[[Image.Image], torch.Tensor]) -> tuple[list[Any], np.ndarray, np.ndarray] | None:
    """(PIL stages, mean, std) of a transform that ends in to-tensor then Normalize (timm's and
    open_clip's eval transforms), so that those two run in numpy; None for any other transform."""
    from torchvision import transforms as tv

    stages = list(getattr(transform, "transforms", None) or [])
    if len(stages) < 2:
        return None
    *pil, to_tensor, normalize = stages
    # timm's and open_clip's MaybeToTensor subclass ToTensor (they pass tensors through; ours are PIL)
    if not isinstance(to_tensor, tv.ToTensor) or type(normalize) is not tv.Normalize:
        return None
    mean = np.asarray(normalize.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(normalize.std, dtype=np.float32).reshape(-1, 1, 1)
    if mean.shape != (3, 1, 1) or std.shape != (3, 1, 1):
        return None
    return pil, mean, std


def _through(stages: list[Any], image: Image.Image) -> np.ndarray:
    """The image after the PIL stages, as (H, W, 3) uint8."""
    for stage in stages:
        image = stage(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"a PIL stage of the transform returned {type(image).__name__}")
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


class EmbeddingModel:
    """A loaded timm model in eval mode plus its preprocessing; embeds PIL images.

    `embed` is thread-safe and CPU-bound: call it from a worker thread (see
    `app.vision.embedder.Embedder`), never on the event loop.
    """

    has_text = False  # no text tower: `embed_texts` exists on models that have one

    def __init__(self, spec: ModelSpec, module: torch.nn.Module, device: str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        size = spec.image_size
        data_cfg = timm.data.resolve_data_config(
            # crop_pct 1.0: catalog photos are framed on the product, don't cut its edges.
            {"input_size": (3, size, size), "crop_pct": 1.0} if size else {"crop_pct": 1.0},
            model=self.module,
        )
        self.input_size: tuple[int, int, int] = tuple(data_cfg["input_size"])  # type: ignore[assignment]
        self.transform: Callable[[Image.Image], torch.Tensor] = timm.data.create_transform(
            **data_cfg, is_training=False
        )
        with torch.inference_mode():
            probe = self.module(torch.zeros((1, *self.input_size), device=self.device))
        self._dim = int(probe.reshape(1, -1).shape[1])
        self._init_backend_state()

    def _init_backend_state(self) -> None:
        self._numpy_tail = _numpy_tail(self.transform)
        self._single_image_ms: dict[str, float] = {}
        self._best_batch: dict[tuple[str, int], int] = {}
        # The ONNX Runtime sessions by precision ("fp32", "int8") when the onnx backend runs
        # this model (`attach_graphs`); empty: plain torch.
        self._runners: dict[str, Runner] = {}
        self.graphs: GraphFiles | None = None
        self.providers: list[str] = []
        self.fp32_runtime: dict[str, Any] = {}  # which runtime runs the fp32 graph, and why

    def export_module(self) -> torch.nn.Module:
        """The module mapping preprocessed images to features, as exported to ONNX."""
        return self.module

    @property
    def backend(self) -> str:
        """ "onnx" when exported graphs run this model, else "torch"."""
        return "onnx" if self._runners else "torch"

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this model can embed at: ("fp32", "int8") with graphs, else ("fp32",)."""
        return tuple(self._runners) if self._runners else ("fp32",)

    def attach_graphs(
        self, graphs: GraphFiles, threads: int, *, use_cuda: bool = False, fp32_runtime: str = "onnxruntime"
    ) -> None:
        """Run this model's passes over the exported graphs from now on: int8 on ONNX Runtime, fp32
        on ONNX Runtime or OpenVINO (`fp32_runtime`; `auto`: the faster here, measured now, where
        OpenVINO is installed; always ONNX Runtime on CUDA)."""
        runners: dict[str, Runner] = {"fp32": OnnxRunner(graphs.path("fp32"), threads, use_cuda=use_cuda)}
        self.fp32_runtime = {"chosen": "onnxruntime"}
        if not use_cuda and fp32_runtime != "onnxruntime" and (fp32_runtime == "openvino" or openvino_installed()):
            candidate = OpenVinoRunner(graphs.path("fp32"), threads)
            if fp32_runtime == "openvino":
                runners["fp32"] = candidate
                self.fp32_runtime = {"chosen": "openvino"}
            else:
                options: dict[str, Runner] = {"onnxruntime": runners["fp32"], "openvino": candidate}
                chosen, medians = faster_fp32_runner(options, self.input_size)
                runners["fp32"] = options[chosen]  # the other is dropped (its weights freed)
                self.fp32_runtime = {"chosen": chosen, "batch1Ms": medians}
                log.info("model %s fp32: batch-1 ms %s -> %s", self.name, medians, chosen)
        if not use_cuda:  # dynamic int8 ops have no fast CUDA kernels: fp32 only on a GPU
            runners["int8"] = OnnxRunner(graphs.path("int8"), threads, per_row=True)  # batch-independent
        self.providers = runners["fp32"].providers  # type: ignore[attr-defined]
        self.graphs = graphs
        self._runners = runners
        self._single_image_ms.clear()
        self._best_batch.clear()

    def measured_single_image_ms(self, precision: str = "fp32") -> float | None:
        """`single_image_ms(precision)` if it was measured already (no work), else None."""
        return self._single_image_ms.get(self._precision(precision))

    def single_image_ms(self, precision: str = "fp32") -> float:
        """Wall time of one single-image forward pass on this machine, measured once (median of 3).

        Reverse image search sizes its crop batch by it: crops are nearly free on a GPU
        or with a small model, and cost a whole forward pass each with a ViT on 2 cores.
        """
        precision = self._precision(precision)
        if precision not in self._single_image_ms:
            x = torch.zeros((1, *self.input_size))
            self.embed_tensor(x, precision)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                self.embed_tensor(x, precision)
                times.append(time.perf_counter() - started)
            self._single_image_ms[precision] = sorted(times)[1] * 1000.0
        return self._single_image_ms[precision]

    def measured_batch_size(self, precision: str, limit: int) -> int | None:
        """`best_batch_size(precision, limit)` if it was measured already (no work), else None."""
        return self._best_batch.get((self._precision(precision), limit))

    def best_batch_size(self, precision: str = "fp32", limit: int = 32) -> int:
        """The pass size (<= limit) that embeds the most images per second here, measured once.

        Bigger batches are not always faster on a CPU: DINOv2 ViT-S/14 @224 on ONNX Runtime ran
        10 images/s one at a time and 6 at batch 32 on the loaded 2-core machine (activations
        outgrow the caches), while the 64 px ViT-Tiny runs 5x faster in batches of 32 than
        singly. So ingest measures: one pass each at BATCH_CANDIDATES in turn (after a warm-up,
        stopping once a size is 10% slower than the best so far), and the smallest size within
        10% of the best throughput wins (smaller passes start sooner and
        overlap better with the loading of the next images). The int8 graph runs row by row
        (see OnnxRunner.per_row), so every size is as fast: it takes the smallest.
        """
        precision = self._precision(precision)
        key = (precision, limit)
        if key not in self._best_batch:
            sizes = [size for size in BATCH_CANDIDATES if size <= limit] or [limit]
            runner = self._runners.get(precision)
            if getattr(runner, "per_row", False):
                self._best_batch[key] = sizes[0]
                return sizes[0]
            self.embed_tensor(torch.zeros((1, *self.input_size)), precision)  # warm-up
            rates = {}
            for size in sizes:
                x = torch.zeros((size, *self.input_size))
                started = time.perf_counter()
                self.embed_tensor(x, precision)
                rates[size] = size / max(time.perf_counter() - started, 1e-9)
                if rates[size] < 0.9 * max(rates.values()):
                    break  # past the best already: bigger passes only cost measuring time
            best = max(rates.values())
            self._best_batch[key] = min(size for size, rate in rates.items() if rate >= 0.9 * best)
            log.info("model %s %s: images/s by batch size %s -> batches of %d", self.name, precision,
                     {k: round(v, 1) for k, v in rates.items()}, self._best_batch[key])  # fmt: skip
        return self._best_batch[key]

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return self.spec.timm_name

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        weights_path: Path | None = None,
        *,
        device: str = "cpu",
        cache_dir: Path | None = None,
        allow_download: bool = True,
    ) -> EmbeddingModel:
        """Create the model; pretrained weights from `weights_path` or the hub, else ModelUnavailableError.

        Slow (seconds): run it in a thread. ValueError if the architecture cannot
        run at the spec's image size.
        """
        if not spec.is_pretrained:
            try:
                module = _create(spec, pretrained=False)
            except Exception as exc:  # timm asserts on impossible sizes in some architectures
                raise ValueError(
                    f"model {spec.name} cannot be built at imageSize {spec.image_size}: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from exc
        else:
            path = locate_weights(spec, weights_path, cache_dir=cache_dir, allow_download=allow_download)
            try:
                module = _create(spec, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
            except Exception as exc:  # wrong shapes, corrupt file, unpickling refused, ...
                raise ModelUnavailableError(
                    f"could not load weights for model {spec.timm_name} from {path}: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from exc
            # timm loads non-strictly when it drops the classifier, and only logs
            # missing keys: make sure the file really supplied the weights.
            unchanged = _unchanged_fraction(module, _create(spec, pretrained=False))
            if unchanged > 0.5:
                raise ModelUnavailableError(
                    f"weights file {path} does not fit model {spec.timm_name}: {unchanged:.0%} of its "
                    "parameters were left at random initialisation"
                )
        try:
            return cls(spec, module, device)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ValueError(
                f"model {spec.name} cannot run at imageSize {spec.image_size}: {str(exc).splitlines()[0]}"
            ) from exc

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB PIL images -> a (n, 3, H, W) float tensor, as the model expects.

        The transform's PIL stages (resize, crop) run as they are; its to-tensor and Normalize
        stages run in numpy (`_numpy_tail`; the same float32 operations): as torch ops they ran
        on torch's intra-op thread pool, whose wake-ups on a busy 2-core machine cost 16-24 ms
        per 224 px image against 3 ms single-threaded (measured at load 3.5), for every catalog
        image and query crop.
        """
        if not images:
            return torch.zeros((0, *self.input_size))
        rgb = [img if img.mode == "RGB" else img.convert("RGB") for img in images]
        if self._numpy_tail is None:
            return torch.stack([self.transform(img) for img in rgb])
        stages, mean, std = self._numpy_tail
        first = _through(stages, rgb[0])
        out = np.empty((len(rgb), 3, first.shape[0], first.shape[1]), dtype=np.float32)
        out[0] = first.transpose(2, 0, 1)
        for i, img in enumerate(rgb[1:], start=1):
            out[i] = _through(stages, img).transpose(2, 0, 1)
        out /= np.float32(255.0)
        out -= mean
        out /= std
        return torch.from_numpy(out)

    def _precision(self, precision: str) -> str:
        """The precision actually run: what was asked if this model has it, else fp32 (torch)."""
        return precision if precision in self._runners else "fp32"

    def embed_tensor(self, batch: torch.Tensor, precision: str = "fp32") -> np.ndarray:
        """Preprocessed (n, 3, H, W) -> float32 (n, dim), rows L2-normalised.

        With exported graphs attached, the ONNX Runtime session of `precision` runs the pass
        (fp32 where that precision is not available); otherwise torch does.
        """
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        runner = self._runners.get(self._precision(precision)) if self._runners else None
        if runner is not None:
            features = runner(batch.numpy()).reshape(batch.shape[0], -1)
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            return (features / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        return self.torch_embed_tensor(batch)

    def torch_embed_tensor(self, batch: torch.Tensor) -> np.ndarray:
        """The plain torch pass (the reference the exported graphs are checked against)."""
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            features = self.module(batch.to(self.device)).reshape(batch.shape[0], -1).float()
            features = F.normalize(features, dim=1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def embed(self, images: Sequence[Image.Image], precision: str = "fp32") -> np.ndarray:
        """Images -> float32 (n, dim) L2-normalised embeddings."""
        return self.embed_tensor(self.preprocess(images), precision)


def load_model(
    spec: ModelSpec,
    weights_path: Path | None = None,
    *,
    device: str = "cpu",
    cache_dir: Path | None = None,
    allow_download: bool = True,
) -> EmbeddingModel:
    """Load `spec` with its library's loader (timm here, open_clip in app.vision.openclip)."""
    loader = EmbeddingModel.load
    if spec.library == "open_clip":
        from app.vision.openclip import OpenClipModel

        loader = OpenClipModel.load
    return loader(spec, weights_path, device=device, cache_dir=cache_dir, allow_download=allow_download)


class ModelRegistry:
    """Loads each model once per process and hands out the shared instance; thread-safe.

    `backend="onnx"` (with `graph_dir`) also exports the model's fp32 and int8 ONNX graphs
    into `graph_dir` (once; cached there across restarts) and runs the passes on ONNX Runtime
    with `threads` intra-op threads; `backend="torch"` runs plain torch (on CUDA where torch
    sees a GPU and `device` is "auto").
    """

    def __init__(
        self,
        weights_path: Path | None = None,
        *,
        cache_dir: Path | None = None,
        device: str = "cpu",
        allow_download: bool = True,
        backend: str = "torch",
        graph_dir: Path | None = None,
        threads: int = 0,
        fp32_runtime: str = "auto",
    ) -> None:
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be torch or onnx (resolve auto first), got {backend!r}")
        if backend == "onnx" and graph_dir is None:
            raise ValueError("the onnx backend needs a graph_dir for its exported graphs")
        if device == "auto":
            device = "cuda" if backend == "torch" and torch.cuda.is_available() else "cpu"
        self.backend = backend
        self.graph_cache = GraphCache(graph_dir) if graph_dir is not None else None
        self._threads = threads
        self._fp32_runtime = fp32_runtime
        self.weights_path = weights_path
        self._cache_dir = cache_dir
        self._device = device
        self._allow_download = allow_download
        self._models: dict[str, EmbeddingModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # Set by `cancel_exports` at shutdown: an export in progress stops at its next step.
        self._exports_cancelled = threading.Event()

    def cancel_exports(self) -> None:
        """Stop exports in progress at their next step (ExportCancelledError) and refuse new ones."""
        self._exports_cancelled.set()

    def get(self, spec: ModelSpec) -> EmbeddingModel:
        """The loaded model for `spec`, loading it on first use (slow: call from a thread)."""
        key = spec.cache_key
        model = self._models.get(key)
        if model is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        # One lock per model: loading one model does not block using another.
        with lock:
            model = self._models.get(key)
            if model is None:
                model = load_model(
                    spec,
                    self.weights_path,
                    device=self._device,
                    cache_dir=self._cache_dir,
                    allow_download=self._allow_download,
                )
                if self.backend == "onnx":
                    self._attach_graphs(model)
                self._models[key] = model
            return model

    def _attach_graphs(self, model: EmbeddingModel) -> None:
        assert self.graph_cache is not None
        try:
            graphs = self.graph_cache.ensure(
                model.spec.cache_key, model.export_module(), model.input_size, cancelled=self._exports_cancelled
            )
            threads = self._threads if self._threads > 0 else torch.get_num_threads()
            model.attach_graphs(graphs, threads, use_cuda=cuda_provider_available(), fp32_runtime=self._fp32_runtime)
        except ExportCancelledError:
            raise  # shutting down: the model is not registered half-made
        except Exception as exc:  # an architecture the exporter or ONNX Runtime cannot take still runs, on torch
            first = str(exc).splitlines()[0] if str(exc) else ""
            log.warning("model %s could not be exported to ONNX (%s: %s); it runs on torch", model.name,
                        type(exc).__name__, first)  # fmt: skip

    def loaded_model(self, spec: ModelSpec) -> EmbeddingModel | None:
        """The model for `spec` if it is loaded already (never loads)."""
        return self._models.get(spec.cache_key)

    def loaded(self) -> list[ModelSpec]:
        return [m.spec for m in list(self._models.values())]
