"""One Settings object built from LOOKALIKE_* environment variables.

No module reads the environment except through `Settings.from_env()`, so tests
build their own Settings and pass them to `create_app`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import platformdirs


def _env_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _env_choice(env: dict[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {env.get(name)!r}")
    return raw


def _env_float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class FetchAllowList:
    """Hosts and networks that may be fetched although they resolve to private space."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, raw: str | None) -> FetchAllowList:
        hosts: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in (raw or "").split(","):
            item = item.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


def _origins(raw: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated origin list (`https://shop.example,http://localhost:3000`, or `*`)."""
    if raw is None:
        return default
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


INGEST_MODES = ("inline", "queue")


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    database_read_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("lookalike")))
    api_key: str | None = None
    fetch_allowlist: FetchAllowList = field(default_factory=FetchAllowList)
    model_weights: Path | None = None
    log_format: str | None = None  # "json" | "text"; None: text on a terminal, else JSON lines

    # HTTP limits
    max_body_bytes: int = 32 * 1024 * 1024
    max_documents_per_call: int = 128
    max_get_documents: int = 100

    # Image fetching limits
    fetch_connect_timeout_s: float = 5.0
    fetch_read_timeout_s: float = 10.0
    fetch_total_timeout_s: float = 20.0
    fetch_max_bytes: int = 20 * 1024 * 1024
    fetch_max_redirects: int = 3
    max_image_pixels: int = 40_000_000
    fetch_concurrency: int = 16

    # Compute
    inference_threads: int = 0  # 0 = torch default (all cores)
    # auto: ONNX Runtime where installed, else torch (app/vision/backend.py)
    inference_backend: str = "auto"
    # auto: int8 where the quality guard passes on the index's images, else fp32; fp32: never int8
    inference_precision: str = "auto"
    # Which runtime runs the exported fp32 graph: auto (the faster of ONNX Runtime and OpenVINO,
    # measured when a model loads, where openvino is installed), onnxruntime or openvino.
    inference_runtime: str = "auto"
    embed_batch_size: int = 32
    cpu_workers: int = 2

    # CORS: origins allowed on read endpoints (default any) and on admin endpoints (default none)
    cors_origins: tuple[str, ...] = ("*",)
    admin_cors_origins: tuple[str, ...] = ()

    # Database pool
    pool_min_size: int = 2
    pool_max_size: int = 10
    statement_timeout_ms: int = 30_000

    # Read replicas (LOOKALIKE_DATABASE_READ_URL): skipped while their replay lag exceeds
    # replica_max_lag_s or they do not answer a check within replica_check_timeout_s.
    replica_max_lag_s: float = 5.0
    replica_check_interval_s: float = 1.0
    replica_check_timeout_s: float = 2.0

    # Ingest: "inline" embeds inside add-documents; "queue" stores products pending and
    # answers 202, and `lookalike worker` processes embed them.
    ingest_mode: str = "inline"
    # A worker's claim on a batch of queued products lapses after this long (a killed
    # worker's products return to the queue then); a product claimed this many times
    # without finishing is marked failed.
    worker_lease_s: float = 120.0
    worker_max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.ingest_mode not in INGEST_MODES:
            choices = ", ".join(INGEST_MODES)
            raise ValueError(f"LOOKALIKE_INGEST_MODE must be one of {choices}, got {self.ingest_mode!r}")

    @property
    def read_urls(self) -> list[str]:
        """The replica URLs of LOOKALIKE_DATABASE_READ_URL (comma-separated)."""
        return [u.strip() for u in (self.database_read_url or "").split(",") if u.strip()]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = env.get("LOOKALIKE_DATA_DIR")
        weights = env.get("LOOKALIKE_MODEL_WEIGHTS")
        base = cls()
        return replace(
            base,
            database_url=env.get("LOOKALIKE_DATABASE_URL") or None,
            database_read_url=env.get("LOOKALIKE_DATABASE_READ_URL") or None,
            data_dir=Path(data_dir).expanduser() if data_dir else base.data_dir,
            api_key=env.get("LOOKALIKE_API_KEY") or None,
            fetch_allowlist=FetchAllowList.parse(env.get("LOOKALIKE_IMAGE_FETCH_ALLOWLIST")),
            model_weights=Path(weights).expanduser() if weights else None,
            log_format=_env_choice(env, "LOOKALIKE_LOG_FORMAT", ("json", "text")),
            max_body_bytes=_env_int(env, "LOOKALIKE_MAX_BODY_BYTES", base.max_body_bytes),
            max_documents_per_call=_env_int(env, "LOOKALIKE_MAX_DOCUMENTS_PER_CALL", base.max_documents_per_call),
            fetch_max_bytes=_env_int(env, "LOOKALIKE_FETCH_MAX_BYTES", base.fetch_max_bytes),
            fetch_total_timeout_s=_env_float(env, "LOOKALIKE_FETCH_TIMEOUT_S", base.fetch_total_timeout_s),
            max_image_pixels=_env_int(env, "LOOKALIKE_MAX_IMAGE_PIXELS", base.max_image_pixels),
            inference_threads=_env_int(env, "LOOKALIKE_INFERENCE_THREADS", base.inference_threads),
            inference_backend=_env_choice(env, "LOOKALIKE_INFERENCE_BACKEND", ("auto", "torch", "onnx")) or "auto",
            inference_precision=_env_choice(env, "LOOKALIKE_INFERENCE_PRECISION", ("auto", "fp32")) or "auto",
            inference_runtime=_env_choice(env, "LOOKALIKE_INFERENCE_RUNTIME", ("auto", "onnxruntime", "openvino"))
            or "auto",
            embed_batch_size=_env_int(env, "LOOKALIKE_EMBED_BATCH_SIZE", base.embed_batch_size),
            pool_max_size=_env_int(env, "LOOKALIKE_POOL_MAX_SIZE", base.pool_max_size),
            cors_origins=_origins(env.get("LOOKALIKE_CORS_ORIGINS"), base.cors_origins),
            admin_cors_origins=_origins(env.get("LOOKALIKE_ADMIN_CORS_ORIGINS"), base.admin_cors_origins),


            replica_max_lag_s=_env_float(env, "LOOKALIKE_REPLICA_MAX_LAG_S", base.replica_max_lag_s),
            replica_check_interval_s=_env_float(
                env, "LOOKALIKE_REPLICA_CHECK_INTERVAL_S", base.replica_check_interval_s
            ),
            ingest_mode=(env.get("LOOKALIKE_INGEST_MODE") or base.ingest_mode).strip().lower(),
            worker_lease_s=_env_float(env, "LOOKALIKE_WORKER_LEASE_S", base.worker_lease_s),
            worker_max_attempts=_env_int(env, "LOOKALIKE_WORKER_MAX_ATTEMPTS", base.worker_max_attempts),
        )
