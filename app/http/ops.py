"""Operations: request ids, one JSON access-log line per request, Prometheus metrics, /health.

The metrics live in a registry owned by the app (no import-time globals), so every
app built by `create_app` (tests build many) has its own counters.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("lookalike.access")

# The id of the request being served, for every log line written while serving it.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("lookalike_request_id", default=None)

# An incoming x-request-id is echoed only when it looks like an id: it ends up in logs, and a
# caller must not be able to inject newlines, JSON or megabytes into them.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _ServiceCollector(Collector):
    """Gauges read at scrape time from the running services: embedding queue, pool, models."""

    def __init__(self) -> None:
        self.services: Any = None  # set by the lifespan once the pool and models exist

    def collect(self) -> Iterator[Any]:
        svc = self.services
        if svc is None:
            return
        embedder = svc.vision.embedder
        yield GaugeMetricFamily(
            "lookalike_embed_queue_depth",
            "Images accepted for embedding and not yet embedded (queued or in a forward pass)",
            value=embedder.queue_depth,
        )
        yield CounterMetricFamily(
            "lookalike_embed_batches", "Model forward passes run", value=embedder.batches_run
        )
        yield GaugeMetricFamily(
            "lookalike_models_loaded", "Models loaded in this process", value=len(svc.vision.registry.loaded())
        )
        pool = svc.pool
        size, idle = pool.get_size(), pool.get_idle_size()
        yield GaugeMetricFamily("lookalike_db_pool_size", "Open database connections", value=size)
        yield GaugeMetricFamily("lookalike_db_pool_idle", "Idle database connections", value=idle)
        yield GaugeMetricFamily("lookalike_db_pool_in_use", "Database connections in use", value=size - idle)
        yield GaugeMetricFamily("lookalike_db_pool_max", "Pool maximum size", value=pool.get_max_size())
        database = getattr(svc, "database", None)
        if database is None:
            return
        reads = CounterMetricFamily("lookalike_db_reads", "Read-endpoint statement groups by where they ran",
                                    labels=["target"])
        reads.add_metric(["primary"], database.primary_reads)
        reads.add_metric(["replica"], sum(replica.reads for replica in database.replicas))
        usable = GaugeMetricFamily("lookalike_replica_usable", "1 while the replica serves reads", labels=["replica"])
        lag = GaugeMetricFamily("lookalike_replica_lag_seconds", "Replica replay lag (seconds; NaN when unknown)",
                                labels=["replica"])
        lag_bytes = GaugeMetricFamily("lookalike_replica_lag_bytes", "WAL bytes the replica has not replayed",
                                      labels=["replica"])
        for replica in database.replicas:
            label = [replica.label]  # the URL with its password redacted
            usable.add_metric(label, 1.0 if replica.usable else 0.0)
            lag.add_metric(label, float("nan") if replica.lag_s is None else replica.lag_s)
            lag_bytes.add_metric(label, float("nan") if replica.lag_bytes is None else float(replica.lag_bytes))
        yield reads
        yield usable
        yield lag
        yield lag_bytes


class Metrics:
    """The app's Prometheus registry and the instruments the middleware and handlers record into."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_seconds = Histogram(
            "lookalike_http_request_duration_seconds",
            "HTTP request latency by route template, method and status",
            ["method", "route", "status"],
            buckets=_HTTP_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "lookalike_http_requests_in_flight", "HTTP requests being served", registry=self.registry
        )
        self.stage_seconds = Histogram(
            "lookalike_search_stage_seconds",
            "Time spent per search stage (decode, embed, sql, rerank, ...)",
            ["endpoint", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.services = _ServiceCollector()
        self.registry.register(self.services)

    def observe_stages(self, endpoint: str, stages: dict[str, float]) -> None:
        for stage, ms in stages.items():
            self.stage_seconds.labels(endpoint=endpoint, stage=stage).observe(ms / 1000.0)


def observe_stages(request: Request, endpoint: str, stages: dict[str, float]) -> None:
    """Record a search's `StageTimer.stages` (milliseconds) into the app's stage histograms."""
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.observe_stages(endpoint, stages)


def _route_template(scope: Scope) -> str:
    # Starlette records the matched route in the scope; raw paths would explode label cardinality
    # (and carry index names), templates do not.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "<unmatched>"


class RequestContextMiddleware:
    """Accepts or assigns `x-request-id`, returns it, times the request, logs and measures it.

    Logged: request id, method, route template, path (no query string), status, duration.
    Never logged: headers (Authorization, x-marqo-index-id), query strings, bodies.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        self.metrics.in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            self.metrics.in_flight.dec()
            route = _route_template(scope)
            method = scope.get("method", "")
            self.metrics.request_seconds.labels(method=method, route=route, status=str(status)).observe(duration)
            access_log.info(
                "%s %s %s",
                method,
                route,
                status,
                extra={
                    "fields": {
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "path": scope.get("path", ""),
                        "status": status,
                        "duration_ms": round(duration * 1000, 2),
                    }
                },
            )
            request_id_var.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


# --- logging -------------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request being served (if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, and any `fields` extra."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_json_logging(level: str = "info") -> None:
    """Route every logger (ours, uvicorn's, asyncpg's) through one JSON-lines handler on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings become JSON lines too (logger "py.warnings")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


# --- endpoints -----------------------------------------------------------------------------


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def health(request: Request) -> JSONResponse:
    """Liveness and readiness: the database answers; which models are loaded; queue and pool."""
    svc = request.app.state.services
    embedder = svc.vision.embedder
    models = {
        "loaded": [spec.name for spec in svc.vision.registry.loaded()],
        "embedQueueDepth": embedder.queue_depth,
    }
    pool = {"size": svc.pool.get_size(), "idle": svc.pool.get_idle_size(), "max": svc.pool.get_max_size()}
    try:
        async with svc.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception:
        return JSONResponse(
            {
                "error": "database unavailable, retry shortly",
                "code": "service_unavailable",
                "status": "unavailable",
                "database": "down",
                "models": models,
                "pool": pool,
            },
            status_code=503,
            headers={"Retry-After": "2"},
        )
    return JSONResponse(
        {
            "status": "ok",
            "database": "ok",
            "modelsLoaded": models["loaded"],
            "models": models,
            "pool": pool,
            "reads": svc.database.reads_from,
            "replicas": svc.database.describe(),
        }
    )
