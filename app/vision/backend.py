"""Inference backends: plain torch, or the model exported to ONNX and run by ONNX Runtime.

Why ONNX Runtime (measured on the shared 2-core AVX-512/VNNI development machine, DINOv2
ViT-S/14 @224, random weights; `benchmarks/inference_bench.py` repeats the torch/ORT part):
its fp32 graph ran a batch-1 pass in 0.4-0.9x torch's time, and the dynamically quantised
int8 graph (`onnxruntime.quantization.quantize_dynamic`, no calibration data needed) in
0.2-0.4x. OpenVINO 2026.4's fp32 was as fast as ORT's on a quieter moment (20-56 ms) but
three to seven times slower under load (198-564 vs 74-139 ms batch 1, interleaved), ran ORT's
int8 graph slowly, needs calibration data (NNCF) for its own int8, and its wheel is 180 MB
against ORT's 78 MB; ORT also has a drop-in CUDA build (`onnxruntime-gpu`).

- `LOOKALIKE_INFERENCE_BACKEND`: `auto` (ONNX Runtime when it is installed, else torch),
  `torch` or `onnx` (required: fail if it is missing).
- Exported graphs are cached under `<data dir>/graphs/`, one folder per key: model spec,
  a digest of the weights (the state dict itself, so a changed seed or weights file is a new
  key), input size and the versions of torch, onnx, onnxruntime and timm. Export (seconds)
  happens once, when a model is loaded (index creation or the start-up warm-up), never
  inside a request, and in a spawned worker process (`_ExportWorker`: tracing and
  quantisation hold the GIL for seconds, which in a thread froze the event loop); a second
  process finds the files and only loads them.
- open_clip models: the image tower is exported (`OpenClipModel.export_module`); the text
  tower stays on torch (text queries are short and cached).
- Two graphs per model: `fp32` and `int8` (dynamic quantisation of the MatMul/Gemm weights;
  see `quantize_int8`). Which one an index uses is decided by the quality guard
  (`app.domain.inference`), never assumed.
- Threads: like torch's pool, ORT's intra-op pool gets `LOOKALIKE_INFERENCE_THREADS` (0: as
  many as torch uses, the physical cores) and one inter-op thread; every pass runs on the
  embedder's single inference thread, so two passes never fight over the cores. Idle pool
  threads do not spin (`allow_spinning=0`): on a shared, busy 2-core machine spinning
  threads steal the cores the pass needs (see `app/__init__.py` for the same finding with
  libgomp). Measured at load 4-8, ViT-S/14 fp32 batch 1: 93-124 ms without spinning, 226-336
  ms with it; one intra-op thread: 181-272 ms.
- GPU: where the installed onnxruntime offers `CUDAExecutionProvider` (the `onnxruntime-gpu`
  wheel), sessions run on it, fp32 only (dynamic int8 ops have no fast CUDA kernels; a new
  index's guard then says `off`); the torch backend uses CUDA when torch sees a GPU. Neither
  is ever required, and no GPU figure has been measured for this project.
- Tried and not adopted (no gain measured; the recipe, and so the cache keys, stay as they
  are): ONNX Runtime's transformer optimizer (`onnxruntime.transformers.optimizer`,
  model_type vit, 6 heads, 384 wide) fuses SkipLayerNormalization (24) and BiasGelu (12) in
  DINOv2 ViT-S/14 but no Attention: timm's single qkv Linear + unbind (and torch's SDPA
  export, which scales q and k by sqrt(sqrt(d)) each) match none of its attention patterns,
  with timm's manual attention neither. Interleaved, 20 rounds, 2 threads, load 2.7, batch-1
  p50 / batch-16 images/s: exported as today 62.0 ms / 14.8, optimised 68.2 / 15.4, manual
  attention 64.7 / 17.0, manual + optimised 69.6 / 16.9: within the noise of a shared
  machine (cosines to the plain export >= 0.9999998). ORT's own ORT_ENABLE_ALL already fuses
  LayerNorm and Gelu; the MatMuls (~90% of the FLOPs) run on MLAS's AVX-512 kernels at a
  large share of this CPU's peak, so fusing the rest has little left to win. Batch size: see
  `EmbeddingModel.best_batch_size` (bigger is not faster here).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("lookalike.inference")

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("fp32", "int8")
OPSET = 17
_EXPORT_FORMAT = 1  # bump when the export recipe below changes: old cached graphs are then ignored


class BackendUnavailableError(RuntimeError):
    """The configured backend cannot run here (e.g. `onnx` without onnxruntime installed)."""


class ExportCancelledError(RuntimeError):
    """The process is shutting down: an export in progress stopped at its next step (nothing cached)."""


def onnx_installed() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(configured: str) -> str:
    """`auto` -> `onnx` where ONNX Runtime is installed, else `torch`; `onnx` must be installed."""
    if configured not in BACKENDS:
        raise ValueError(f"LOOKALIKE_INFERENCE_BACKEND must be one of {', '.join(BACKENDS)}, got {configured!r}")
    if configured == "torch":
        return "torch"
    if onnx_installed():
        return "onnx"
    if configured == "onnx":
        raise BackendUnavailableError(
            "LOOKALIKE_INFERENCE_BACKEND=onnx needs the onnx and onnxruntime packages: pip install onnx onnxruntime"
        )
    return "torch"


def library_versions() -> dict[str, str]:
    """The versions an exported graph depends on (part of its cache key)."""
    out = {}
    for dist in ("torch", "onnx", "onnxruntime", "timm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            # onnxruntime-gpu installs the module under another distribution name
            out[dist] = metadata.version("onnxruntime-gpu") if dist == "onnxruntime" else "none"
    return out


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of the state dict (names, dtypes, shapes, bytes): the identity of the weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cuda_provider_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# -- the graph cache -----------------------------------------------------------------------


@dataclass(frozen=True)
class GraphFiles:
    key: str
    folder: Path
    exported: bool  # True if this call exported (and quantised); False if it found the cache

    def path(self, precision: str) -> Path:
        return self.folder / f"model.{precision}.onnx"


class GraphCache:
    """Exported ONNX graphs under `root`, one folder per cache key; safe across threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    @staticmethod
    def key_material(
        model_key: str, digest: str, input_size: tuple[int, ...], versions: dict[str, str]
    ) -> dict[str, Any]:
        return {
            "model": model_key,
            "weights": digest,
            "inputSize": list(input_size),
            "versions": versions,
            "opset": OPSET,
            "format": _EXPORT_FORMAT,
        }

    @staticmethod
    def key_of(material: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]

    def ensure(
        self,
        model_key: str,
        module: torch.nn.Module,
        input_size: tuple[int, ...],
        *,
        versions: dict[str, str] | None = None,
        digest: str | None = None,
        cancelled: threading.Event | None = None,
    ) -> GraphFiles:
        """The fp32 and int8 graphs for this module, exporting and quantising them if not cached.

        The export and the quantisation run in a spawned subprocess (see `_export_in_subprocess`),
        so this thread holds the GIL only to pickle the module. `cancelled` (set at shutdown) is
        polled meanwhile: a set event terminates the subprocess and raises ExportCancelledError,
        leaving nothing in the cache.
        """

        def check_cancelled() -> None:
            if cancelled is not None and cancelled.is_set():
                raise ExportCancelledError(f"export of {model_key} cancelled (shutting down)")

        material = self.key_material(
            model_key, digest or weights_digest(module), input_size, versions or library_versions()
        )
        key = self.key_of(material)
        folder = self.root / f"{_safe(model_key)}-{key}"
        with self._lock:
            if (folder / "meta.json").is_file():
                return GraphFiles(key, folder, exported=False)
            check_cancelled()
            self.root.mkdir(parents=True, exist_ok=True)
            # Build in a private temp folder, then rename: a crash or a second process never
            # leaves (or sees) half-written graphs.
            work = Path(tempfile.mkdtemp(prefix=".export-", dir=self.root))
            try:
                started = time.perf_counter()
                log.info("exporting %s to ONNX in a subprocess (once; cached in %s)", model_key, folder)
                timings = _export_in_subprocess(module, input_size, work, model_key, check_cancelled)
                total_s = time.perf_counter() - started
                meta = {**material, "exportSeconds": timings["exportSeconds"], "totalSeconds": round(total_s, 2)}
                (work / "meta.json").write_text(json.dumps(meta, indent=2))
                try:
                    os.replace(work, folder)
                except OSError:  # another process finished first: use its files
                    if not (folder / "meta.json").is_file():
                        raise
                    return GraphFiles(key, folder, exported=False)
                log.info("ONNX graphs for %s ready in %.1f s", model_key, total_s)
                return GraphFiles(key, folder, exported=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)


# -- the export subprocess -----------------------------------------------------------------
#
# torch.onnx.export's tracing and graph passes, and onnxruntime's quantize_dynamic, hold the GIL
# for seconds at a time (a 12.7 s export stalled the event loop, measured): in a thread they
# freeze every request of the process. So both run in a spawned worker process; the parent only
# pickles the module into the private work folder (0.03-0.4 s of GIL) and waits, polling for
# shutdown. The worker imports torch, timm and the ONNX tools once (3-7 s here) and serves the
# process's later exports too (the test suite's many apps), until it has been idle for
# `_WORKER_IDLE_S`.

_POLL_S = 0.1
_WORKER_IDLE_S = 120.0
EXPORT_TIMEOUT_S = 3600.0  # a wedged export worker is killed after this (ViT-B-32: ~15 s on 2 loaded cores)


def _export_worker(conn: Any) -> None:
    """The worker process: one job at a time, (module file, input size, work folder) -> progress messages."""
    torch.set_num_threads(1)  # one forward pass to trace: leave the cores to the service
    import timm  # noqa: F401  (what the pickled modules need; imported before the first job)

    while conn.poll(_WORKER_IDLE_S):
        try:
            module_file, input_size, work = conn.recv()
        except EOFError:  # the parent is gone
            return
        try:
            started = time.perf_counter()
            module = torch.load(module_file, weights_only=False)  # our own pickle, written by the parent
            os.unlink(module_file)
            export_onnx(module, input_size, Path(work) / "model.fp32.onnx")
            del module
            conn.send(("exported", round(time.perf_counter() - started, 2)))
            quantize_int8(Path(work) / "model.fp32.onnx", Path(work) / "model.int8.onnx")
            conn.send(("done", round(time.perf_counter() - started, 2)))
        except Exception as exc:  # reported to the parent, which raises it there
            first = str(exc).splitlines()[0] if str(exc) else ""
            conn.send(("error", f"{type(exc).__name__}: {first}"))


class _ExportWorker:
    """The process's export worker (spawned on first use, again after it exited or was stopped)."""

    _lock = threading.Lock()  # one export at a time per process: the worker runs one job at a time
    _process: Any = None
    _conn: Any = None

    @classmethod
    def _ensure(cls) -> Any:
        if cls._process is None or not cls._process.is_alive():
            context = multiprocessing.get_context("spawn")  # fork would copy the parent's threads' locks
            cls._conn, child_end = context.Pipe()
            cls._process = context.Process(
                target=_export_worker, args=(child_end,), name="lookalike-export", daemon=True
            )
            cls._process.start()
            child_end.close()
        return cls._conn

    @classmethod
    def _stop(cls) -> None:
        process, cls._process = cls._process, None
        if cls._conn is not None:
            cls._conn.close()
            cls._conn = None
        if process is not None and process.is_alive():
            process.terminate()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()

    @classmethod
    def run(
        cls,
        module_file: Path,
        input_size: tuple[int, ...],
        work: Path,
        model_key: str,
        check_cancelled: Callable[[], None],
    ) -> dict[str, float]:
        with cls._lock:
            try:
                for attempt in (1, 2):
                    timings = cls._job((str(module_file), tuple(input_size), str(work)), model_key, check_cancelled)
                    if timings is not None:
                        return timings
                    # it exited idle as the job was sent (nothing done yet): once more, on a fresh one
                    log.info("export worker had exited (attempt %d); starting another", attempt)
                    cls._stop()
                raise RuntimeError(f"export process for {model_key} exited before taking the job")
            except BaseException:
                # cancelled, timed out, failed or died mid-job: stop it, so it writes nothing more
                cls._stop()
                raise

    @classmethod
    def _job(
        cls, job: tuple[str, tuple[int, ...], str], model_key: str, check_cancelled: Callable[[], None]
    ) -> dict[str, float] | None:
        """Send one job and wait for it; None if the worker was gone before it took the job."""
        conn = cls._ensure()
        try:
            conn.send(job)
        except OSError:  # BrokenPipeError: it had exited
            return None
        deadline = time.monotonic() + EXPORT_TIMEOUT_S
        timings: dict[str, float] = {}
        while True:
            check_cancelled()
            if time.monotonic() > deadline:
                raise RuntimeError(f"export of {model_key} took longer than {EXPORT_TIMEOUT_S:.0f} s")
            if not conn.poll(_POLL_S):
                continue
            try:
                step, value = conn.recv()
            except EOFError:
                cls._process.join(5)
                if not timings and cls._process.exitcode == 0:  # an idle exit, not a crash
                    return None
                raise RuntimeError(f"export process for {model_key} died (exit code {cls._process.exitcode})") from None
            if step == "error":
                raise RuntimeError(f"export of {model_key} failed in its subprocess: {value}")
            if step == "exported":
                timings["exportSeconds"] = value
                log.info("exported %s in %.1f s; quantising to int8", model_key, value)
            elif step == "done":
                timings["totalSeconds"] = value
                return timings


def _export_in_subprocess(
    module: torch.nn.Module,
    input_size: tuple[int, ...],
    work: Path,
    model_key: str,
    check_cancelled: Callable[[], None],
) -> dict[str, float]:
    """Export and quantise `module` into `work` in the export worker; logs each step's progress.

    `check_cancelled` is polled while the worker works: when it raises (shutdown), the worker is
    terminated at once and the error propagates (the caller removes `work`).
    """
    module_file = work / "module.pt"
    torch.save(module, module_file)
    try:
        return _ExportWorker.run(module_file, input_size, work, model_key, check_cancelled)
    finally:
        module_file.unlink(missing_ok=True)  # the worker removes it once loaded; never cache it


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80]


class _Flatten(torch.nn.Module):
    """The module's features as (n, dim): what `EmbeddingModel.embed_tensor` takes before normalising."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).flatten(1)


def export_onnx(module: torch.nn.Module, input_size: tuple[int, ...], path: Path) -> None:
    """torch.onnx.export with the TorchScript exporter (no onnxscript needed), batch axis dynamic."""
    module = module.eval()
    dummy = torch.zeros((1, *input_size))
    # Grad enabled while tracing: under no_grad, nn.MultiheadAttention (open_clip's towers) takes
    # its fused fast path, whose aten op has no ONNX export.
    with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
        # The exporter warns about traced Python conditionals in timm's blocks; the traced
        # path is the one inference takes (eval mode, fixed input size).
        warnings.simplefilter("ignore")
        # .eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, and a
        # fresh wrapper is in training mode, which would leave the model's BatchNorm training.
        torch.onnx.export(
            _Flatten(module).eval(),
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
        )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of MatMul/Gemm weights (activations quantised at run time; no calibration).

    Conv is left fp32: ORT's ConvInteger ran resnet18 @96 five times slower than fp32 Conv
    here (21.4 vs 4.3 ms batch 1), and quantising it failed outright on timm's exported CNNs
    ("Expected ... to be an initializer"). So CNNs gain little from int8 and the guard's speed
    check keeps them at fp32; ViTs (all MatMul) gain most.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs a "consider pre-processing" warning on the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


# -- running a graph -----------------------------------------------------------------------


class OnnxRunner:
    """One ONNX Runtime session: (n, 3, H, W) float32 -> (n, dim) float32 features (not normalised).

    `per_row`: one image per run. The int8 graph needs it: dynamic quantisation picks one
    activation scale per tensor, i.e. per batch, so an image's int8 embedding would depend on
    its batch-mates (a stored vector on its ingest batch, a query on concurrent queries; seen as
    0.004 score differences between the service and an offline run over the same images). For
    ViT-S/14 the row loop cost nothing measurable (batch-1 int8 65-95 ms, i.e. 10-15 images/s,
    against 6-9 images/s at batch 16).

    Thread-safe (ORT sessions allow concurrent `run`); the embedder calls it from one thread.
    """

    def __init__(self, path: Path, threads: int, *, use_cuda: bool = False, per_row: bool = False) -> None:
        import onnxruntime as ort

        self.per_row = per_row
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()
        self._input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.per_row and batch.shape[0] > 1:
            return np.concatenate([self._run(batch[i : i + 1]) for i in range(batch.shape[0])])
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self._input: batch})
        return np.asarray(features, dtype=np.float32)


Runner = Callable[[np.ndarray], np.ndarray]

FP32_RUNTIMES = ("auto", "onnxruntime", "openvino")


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoRunner:
    """The fp32 ONNX graph compiled by OpenVINO for the CPU: same contract as OnnxRunner.

    Only the fp32 graph: OpenVINO ran ORT's dynamically quantised int8 graph slowly (its own
    int8 needs calibration data), so int8 stays on ONNX Runtime. One inference at a time (a
    compiled model's implicit infer request is not shared across threads; the embedder runs
    passes on one thread anyway).
    """

    per_row = False

    def __init__(self, path: Path, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": max(1, threads), "PERFORMANCE_HINT": "LATENCY"}
        self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.providers = [f"OpenVINO:CPU ({ov.get_version().split('-')[0]})"]
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            result = self._compiled(batch)
        return np.asarray(result[0], dtype=np.float32)


def faster_fp32_runner(
    candidates: dict[str, Runner], input_size: tuple[int, ...], rounds: int = 3
) -> tuple[str, dict[str, float]]:
    """The candidate with the lowest median batch-1 pass time here, measured interleaved (after a
    warm-up each) so that load drifting on a shared machine hits them alike; and the medians (ms)."""
    x = np.zeros((1, *input_size), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for runner in candidates.values():
        runner(x)
    for _ in range(rounds):
        for name, runner in candidates.items():
            started = time.perf_counter()
            runner(x)
            times[name].append((time.perf_counter() - started) * 1000)
    medians = {name: round(float(np.median(t)), 2) for name, t in times.items()}
    return min(medians, key=lambda name: medians[name]), medians
