"""open_clip image+text models (CLIP, SigLIP, Marqo's e-commerce models) as an index's model.

The setting (SPEC "Beyond the seed" / Models) is an object
`{"library": "open_clip", "name": N, "pretrained": P, "seed": 0}`:

- N an open_clip architecture (`ViT-B-32`, `ViT-B-16-SigLIP`, ...) with P a pretrained tag
  (`openai`, `webli`, ...) or false (seeded random weights: offline tests and demos);
- N `hf-hub:org/repo` (e.g. `hf-hub:Marqo/marqo-ecommerce-embeddings-B`): the repo's
  `open_clip_config.json` and weights; P true (default) or false (its architecture, random).

Both towers embed into one space: the image tower embeds products and image queries, the
text tower text queries; each has its own preprocessing (open_clip's, from the config and
pretrained tag) and tokenizer (open_clip's bundled BPE for CLIP; a Hugging Face tokenizer,
read through `transformers`, for SigLIP-family models).

Files come, as for timm, from `LOOKALIKE_MODEL_WEIGHTS` (a weights file, or a directory
holding `<name>.<tag>.safetensors` files or per-model folders such as a Hugging Face repo
downloaded with `--local-dir`) or the Hugging Face hub cache, downloading only when the
hub is reachable; otherwise `ModelUnavailableError` says how to provide them.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from app.vision import model as timm_model
from app.vision.model import EmbeddingModel, ModelSpec, ModelUnavailableError

LIBRARY = "open_clip"
HF_HUB_PREFIX = "hf-hub:"
_SPEC_KEYS = ("library", "name", "pretrained", "seed")
CONFIG_FILE = "open_clip_config.json"
# open_clip's own checkpoint names, preferred first (safetensors: no pickle).
CHECKPOINT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# What transformers' AutoTokenizer reads from a tokenizer repo.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "config.json",
)
# Random-weight ViT-B-32 with the bundled tokenizer: what tests and offline benchmarks use.
OFFLINE_OPEN_CLIP_MODEL: dict[str, Any] = {"library": LIBRARY, "name": "ViT-B-32", "pretrained": False, "seed": 0}
OFFLINE_OPEN_CLIP_DIM = 512


class _DropRandomInitWarning(logging.Filter):
    """open_clip logs "initialized randomly" for every model we build: the checkpoint is loaded after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.endswith(os.path.join("open_clip", "factory.py"))
            and str(record.msg).startswith("No pretrained weights loaded")
        )


def _open_clip() -> Any:
    import open_clip

    return open_clip


logging.getLogger().addFilter(_DropRandomInitWarning())  # open_clip logs on the root logger


@dataclass(frozen=True)
class OpenClipSpec(ModelSpec):
    """An open_clip model setting. `pretrained`: a tag, True (an hf-hub repo's weights) or False.

    A ModelSpec so the rest of the app passes it around unchanged; `library` tells them
    apart, `has_text` says a text tower exists. `image_size` is always the model's own.
    """

    library: ClassVar[str] = LIBRARY
    has_text: ClassVar[bool] = True

    @property
    def hub_repo(self) -> str | None:
        return self.name[len(HF_HUB_PREFIX) :] if self.name.startswith(HF_HUB_PREFIX) else None

    @property
    def timm_name(self) -> str:  # the display name, as ModelSpec's is
        return f"{self.name}.{self.tag}" if self.tag else self.name

    @property
    def cache_key(self) -> str:
        if self.is_pretrained:
            return f"open_clip:{self.timm_name}"
        return f"open_clip:{self.name}+random{self.seed}"

    def to_json(self) -> dict[str, Any]:
        pretrained: bool | str = self.tag if self.tag else self.is_pretrained
        return {"library": LIBRARY, "name": self.name, "pretrained": pretrained, "seed": self.seed}


def parse_spec(value: Mapping[str, Any]) -> OpenClipSpec:
    """Validate an open_clip `model` object; ValueError says what is wrong."""
    unknown = sorted(str(k) for k in value if k not in _SPEC_KEYS)
    if unknown:
        raise ValueError(
            f"unknown open_clip model setting {', '.join(unknown)}; allowed: {', '.join(_SPEC_KEYS)}"
        )
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError('open_clip model needs a "name": an architecture such as "ViT-B-32" or "hf-hub:org/repo"')
    name = name.strip()
    pretrained = value.get("pretrained", True)
    if not isinstance(pretrained, bool | str):
        raise ValueError(f'model "pretrained" must be true, false or a tag string, got {pretrained!r}')
    seed = timm_model._check_int(value.get("seed", 0), "model seed", 0, 2**63 - 1)
    if name.startswith(HF_HUB_PREFIX):
        repo = name[len(HF_HUB_PREFIX) :]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ValueError(f"hf-hub model name must be hf-hub:<org>/<repo>, got {name!r}")
        if isinstance(pretrained, str):
            raise ValueError(
                f'an hf-hub model carries its own weights: "pretrained" is true or false, not {pretrained!r}'
            )
        return OpenClipSpec(name, pretrained, None, seed)
    open_clip = _open_clip()
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown open_clip model {name!r}{hint}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained is True:
        raise ValueError(
            f'open_clip model {name}: "pretrained" must name a tag ({", ".join(tags) or "none published"}) '
            "or be false for random weights"
        )
    if isinstance(pretrained, str):
        tag = pretrained.strip()
        if tag not in tags:
            listed = ", ".join(tags) if tags else "none (use false for random weights)"
            raise ValueError(f"open_clip has no pretrained weights {name} {tag!r}; tags for {name}: {listed}")
        return OpenClipSpec(name, tag, None, seed)
    return OpenClipSpec(name, False, None, seed)


# -- files ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Files:
    """Where a model's parts are: its config (hf-hub models), checkpoint and tokenizer folder."""

    config_dir: Path | None
    checkpoint: Path | None
    tokenizer_dir: Path | None = None


def _how_to(spec: OpenClipSpec) -> str:
    repo = spec.hub_repo
    where = (
        f"a folder with {CONFIG_FILE} and {CHECKPOINT_FILES[0]} (or {CHECKPOINT_FILES[1]}) from "
        f"https://huggingface.co/{repo}"
        if repo
        else f"/path/to/{spec.name}.{spec.tag}.safetensors"
    )
    return (
        f"To provide them: set LOOKALIKE_MODEL_WEIGHTS to {where}; or run "
        f"`lookalike models pull '{json.dumps(spec.to_json())}'` on a machine with internet access and copy "
        "its Hugging Face cache (HF_HOME) here; or, for offline tests and demos only, use random weights: "
        f"{json.dumps(OFFLINE_OPEN_CLIP_MODEL)}."
    )


def _hub_file(
    repo: str, filenames: Sequence[str], cache_dir: Path | None, allow_download: bool
) -> tuple[Path | None, str]:
    """The first of `filenames` in the hub cache, else downloaded where allowed; (None, why not) else."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(cached, str):
            return Path(cached), ""
    reason = "downloads are disabled" if not allow_download else timm_model._hub_unreachable_reason()
    if reason is not None:
        return None, f"not in the local cache and {reason}"
    errors: list[str] = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=cache_dir)), ""
        except Exception as exc:  # hub errors come in many types; each is "not available"
            errors.append(f"{filename}: {exc}".splitlines()[0])
    return None, "; ".join(errors)


def _checkpoint_in(directory: Path) -> Path | None:
    for name in CHECKPOINT_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def _local_dirs(root: Path, names: Sequence[str]) -> list[Path]:
    """Folders under a LOOKALIKE_MODEL_WEIGHTS directory that may hold one model: itself and by name."""
    out = [root]
    for name in names:
        out += [root / name, root / name.replace("/", "--"), root / name.split("/")[-1]]
    return list(dict.fromkeys(out))


def _hub_model_files(
    spec: OpenClipSpec, weights_path: Path | None, cache_dir: Path | None, allow_download: bool
) -> _Files:
    repo = spec.hub_repo
    assert repo is not None
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if path.is_file():
            if not (path.parent / CONFIG_FILE).is_file():
                raise ModelUnavailableError(
                    f"LOOKALIKE_MODEL_WEIGHTS is the file {path}, but {spec.name} also needs its {CONFIG_FILE} "
                    f"beside it. {_how_to(spec)}"
                )
            return _Files(path.parent, path if spec.is_pretrained else None)
        if not path.exists():
            raise ModelUnavailableError(f"LOOKALIKE_MODEL_WEIGHTS is {path}, which does not exist. {_how_to(spec)}")
        for folder in _local_dirs(path, [repo]):
            if (folder / CONFIG_FILE).is_file():
                checkpoint = _checkpoint_in(folder)
                if checkpoint is not None or not spec.is_pretrained:
                    return _Files(folder, checkpoint if spec.is_pretrained else None)
    config, why = _hub_file(repo, [CONFIG_FILE], cache_dir, allow_download)
    if config is None:
        raise ModelUnavailableError(f"the config of model {spec.name} is not available: {why}. {_how_to(spec)}")
    if not spec.is_pretrained:
        return _Files(config.parent, None)
    checkpoint, why = _hub_file(repo, CHECKPOINT_FILES, cache_dir, allow_download)
    if checkpoint is None:
        raise ModelUnavailableError(f"weights for model {spec.name} are not available: {why}. {_how_to(spec)}")
    # The hub cache keeps a repo's files in one snapshot folder (config and tokenizer beside the weights).
    return _Files(config.parent, checkpoint)


def _builtin_files(
    spec: OpenClipSpec, weights_path: Path | None, cache_dir: Path | None, allow_download: bool
) -> _Files:
    if not spec.is_pretrained:
        return _Files(None, None)
    cfg = _open_clip().get_pretrained_cfg(spec.name, spec.tag)
    # open_clip's form: "org/repo/" (its default file names) or "org/repo/file.bin"
    hub_repo, hub_filename = os.path.split(str(cfg.get("hf_hub") or ""))
    stem = f"{spec.name}.{spec.tag}"
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if path.is_file():
            return _Files(None, path)
        if not path.exists():
            raise ModelUnavailableError(f"LOOKALIKE_MODEL_WEIGHTS is {path}, which does not exist. {_how_to(spec)}")
        for suffix in _WEIGHT_SUFFIXES:
            if (path / f"{stem}{suffix}").is_file():
                return _Files(None, path / f"{stem}{suffix}")
        for folder in _local_dirs(path, [stem, *([hub_repo] if hub_repo else [])])[1:]:
            checkpoint = _checkpoint_in(folder)
            if checkpoint is not None:
                return _Files(None, checkpoint)
    if not hub_repo:
        raise ModelUnavailableError(
            f"weights for model {stem} are not on the Hugging Face hub (only at {cfg.get('url') or 'no address'}). "
            f"{_how_to(spec)}"
        )
    filenames = [hub_filename] if hub_filename else list(CHECKPOINT_FILES)
    if hub_filename.endswith((".bin", ".pth")):  # open_clip prefers a safetensors twin
        filenames.insert(0, hub_filename[:-4] + ".safetensors")
    checkpoint, why = _hub_file(hub_repo, filenames, cache_dir, allow_download)
    if checkpoint is None:
        raise ModelUnavailableError(f"weights for model {stem} are not available: {why}. {_how_to(spec)}")
    return _Files(None, checkpoint)


def _tokenizer_dir(
    spec: OpenClipSpec,
    tokenizer_repo: str,
    files: _Files,
    weights_path: Path | None,
    cache_dir: Path | None,
    allow_download: bool,
) -> Path:
    """The folder holding the Hugging Face tokenizer `tokenizer_repo` (SigLIP-family text towers)."""

    def has_tokenizer(folder: Path) -> bool:
        return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()

    if files.config_dir is not None and has_tokenizer(files.config_dir):
        return files.config_dir  # Marqo's repos carry their tokenizer beside the weights
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        # beside a weights folder's models, or beside the folder of a weights file
        for root in [path] if path.is_dir() else [path.parent, path.parent.parent]:
            for folder in _local_dirs(root, [tokenizer_repo]):
                if has_tokenizer(folder):
                    return folder
    found, why = _hub_file(tokenizer_repo, ["tokenizer_config.json", "tokenizer.json"], cache_dir, allow_download)
    if found is not None:
        if allow_download and timm_model._hub_unreachable_reason() is None:
            from huggingface_hub import snapshot_download

            try:  # the tokenizer's other files (vocabularies, special tokens), where reachable
                patterns = list(TOKENIZER_FILES)
                return Path(snapshot_download(tokenizer_repo, allow_patterns=patterns, cache_dir=cache_dir))
            except Exception:  # noqa: BLE001 - what the cache holds is tried next
                pass
        return found.parent
    raise ModelUnavailableError(
        f"model {spec.name} tokenizes text with the Hugging Face tokenizer {tokenizer_repo}, which is not "
        f"available: {why}. To provide it: put its files ({', '.join(TOKENIZER_FILES[:3])}, ...) in "
        f"LOOKALIKE_MODEL_WEIGHTS/{tokenizer_repo.replace('/', '--')}/, or run `lookalike models pull "
        f"'{json.dumps(spec.to_json())}'` where the hub is reachable and copy the Hugging Face cache here."
    )


# -- the model -----------------------------------------------------------------


def _create(spec: OpenClipSpec, files: _Files) -> torch.nn.Module:
    """The architecture with seeded random weights (then overwritten by a checkpoint, if any)."""
    open_clip = _open_clip()
    options: dict[str, Any] = {"load_weights": False, "pretrained_image": False, "pretrained_text": False}
    if files.config_dir is not None:
        name = f"local-dir:{files.config_dir}"
    else:
        name = spec.name
        if spec.tag:
            tag_cfg = open_clip.get_pretrained_cfg(spec.name, spec.tag)
            # The tag's own preprocessing and activation: a file path as `pretrained` would lose both.
            options["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
            options["force_preprocess_cfg"] = {
                k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
            }
    with timm_model._CREATE_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return open_clip.create_model(name, **options)


def _tokenizer(
    spec: OpenClipSpec,
    module: torch.nn.Module,
    model_cfg: Mapping[str, Any],
    files: _Files,
    weights_path: Path | None,
    cache_dir: Path | None,
    allow_download: bool,
) -> Callable[[list[str]], torch.Tensor]:
    open_clip = _open_clip()
    text_cfg = dict(model_cfg.get("text_cfg") or {})
    context_length = int(open_clip.get_model_tokenize_cfg(module).get("context_length") or 77)
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    hf_name = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    if not hf_name:
        # open_clip's bundled BPE vocabulary: no files, no network
        return open_clip.SimpleTokenizer(context_length=context_length, **kwargs)  # type: ignore[no-any-return]
    folder = _tokenizer_dir(spec, str(hf_name), files, weights_path, cache_dir, allow_download)
    try:
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(  # type: ignore[no-any-return]
            str(folder),
            context_length=context_length,
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **kwargs,
        )
    except ImportError as exc:
        raise ModelUnavailableError(
            f"model {spec.name} needs the `transformers` package for its tokenizer {hf_name}: {exc}"
        ) from exc
    except Exception as exc:  # missing or corrupt tokenizer files
        raise ModelUnavailableError(
            f"could not load the tokenizer {hf_name} of model {spec.name} from {folder}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def _model_cfg(spec: OpenClipSpec, files: _Files) -> dict[str, Any]:
    if files.config_dir is not None:
        raw = json.loads((files.config_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        return dict(raw.get("model_cfg", raw))
    return dict(_open_clip().get_model_config(spec.name) or {})


class _ImageTower(torch.nn.Module):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(x)


class OpenClipModel(EmbeddingModel):
    """A loaded open_clip model: `embed` images (image tower), `embed_texts` text (text tower).

    Thread-safe and CPU-bound like EmbeddingModel: call from worker threads.
    """

    def __init__(
        self,
        spec: OpenClipSpec,
        module: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        device: str = "cpu",
    ) -> None:
        open_clip = _open_clip()
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.spec = spec
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(self.module))
        self.input_size = tuple(cfg.input_size)  # type: ignore[assignment]
        self.transform = image_transform_v2(cfg, is_train=False)
        self.tokenizer = tokenizer
        # Hugging Face fast tokenizers set truncation/padding on the shared Rust object per call:
        # two threads at once fail with "Already borrowed". Tokenising takes well under a millisecond.
        self._tokenize_lock = threading.Lock()
        with torch.inference_mode():
            probe = self.module.encode_image(torch.zeros((1, *self.input_size), device=self.device))
        self._dim = int(probe.reshape(1, -1).shape[1])
        self._init_backend_state()

    has_text = True

    @classmethod
    def load(  # type: ignore[override]
        cls,
        spec: ModelSpec,
        weights_path: Path | None = None,
        *,
        device: str = "cpu",
        cache_dir: Path | None = None,
        allow_download: bool = True,
    ) -> OpenClipModel:
        """Build the model, load its checkpoint and tokenizer; ModelUnavailableError names what is missing."""
        assert isinstance(spec, OpenClipSpec)
        find = _hub_model_files if spec.hub_repo else _builtin_files
        files = find(spec, weights_path, cache_dir, allow_download)
        try:
            module = _create(spec, files)
        except Exception as exc:  # a config open_clip cannot build (e.g. one needing downloads)
            raise ValueError(
                f"open_clip model {spec.name} cannot be built: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        if files.checkpoint is not None:
            try:  # strict: every parameter must come from the file
                _open_clip().load_checkpoint(module, str(files.checkpoint), strict=True)
            except Exception as exc:  # wrong shapes, missing keys, corrupt file, pickle refused
                raise ModelUnavailableError(
                    f"could not load weights for model {spec.timm_name} from {files.checkpoint}: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from exc
        tokenizer = _tokenizer(
            spec, module, _model_cfg(spec, files), files, weights_path, cache_dir, allow_download
        )
        return cls(spec, module, tokenizer, device)

    def export_module(self) -> torch.nn.Module:
        """The image tower (what the ONNX backend exports; the text tower runs on torch)."""
        return _ImageTower(self.module)

    def torch_embed_tensor(self, batch: torch.Tensor) -> np.ndarray:
        """Preprocessed images (n, 3, H, W) -> float32 (n, dim), rows L2-normalised (image tower, torch)."""
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            features = self.module.encode_image(batch.to(self.device)).float()
            features = F.normalize(features, dim=1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (n, context_length) token ids, as the text tower expects."""
        with self._tokenize_lock:
            return self.tokenizer(list(texts))

    def embed_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """Token ids (n, context_length) -> float32 (n, dim), rows L2-normalised (text tower)."""
        if tokens.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            features = self.module.encode_text(tokens.to(self.device)).float()
            features = F.normalize(features, dim=1)
        return features.cpu().numpy().astype(np.float32, copy=False)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> float32 (n, dim) L2-normalised embeddings in the images' space."""
        return self.embed_tokens(self.tokenize(texts))
