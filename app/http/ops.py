"""Operations: request ids, one JSON access-log line per request, Prometheus metrics, /health.

The metrics live in a registry owned by the app (no import-time globals), so every
app built by `create_app` (tests build many) has its own counters.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.contract.ops import Health, HealthUnavailable, ModelsStatus, PoolStatus, ReplicaStatus
from app.domain.health import HealthService
from app.http.common import model_response
from app.logs import request_id_var

access_log = logging.getLogger("lookalike.access")


# An incoming x-request-id is echoed only when it looks like an id: it ends up in logs, and a
# caller must not be able to inject newlines, JSON or megabytes into them.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _RuntimeCollector(Collector):
    """Gauges read at scrape time from the running services: embedding queue, pool, models."""

    def __init__(self) -> None:
        self.health: HealthService | None = None  # set by the lifespan once the pool and models exist
        self.database: Any = None  # app.storage.replicas.Database, set by the lifespan too

    def collect(self) -> Iterator[Any]:
        if self.health is None:
            return
        now = self.health.snapshot()
        yield GaugeMetricFamily(
            "lookalike_embed_queue_depth",
            "Images accepted for embedding and not yet embedded (queued or in a forward pass)",
            value=now.embed_queue_depth,
        )
        yield CounterMetricFamily("lookalike_embed_batches", "Model forward passes run", value=now.embed_batches_run)
        yield GaugeMetricFamily(
            "lookalike_models_loaded", "Models loaded in this process", value=len(now.models_loaded)
        )
        yield GaugeMetricFamily("lookalike_db_pool_size", "Open database connections", value=now.pool_size)
        yield GaugeMetricFamily("lookalike_db_pool_idle", "Idle database connections", value=now.pool_idle)
        yield GaugeMetricFamily(
            "lookalike_db_pool_in_use", "Database connections in use", value=now.pool_size - now.pool_idle
        )
        yield GaugeMetricFamily("lookalike_db_pool_max", "Pool maximum size", value=now.pool_max)
        if self.database is not None:
            yield from _replica_metrics(self.database)


def _replica_metrics(database: Any) -> Iterator[Any]:
    """Where reads ran, and each read replica's state (labelled by its URL, password redacted)."""
    reads = CounterMetricFamily(
        "lookalike_db_reads", "Read-endpoint statement groups by where they ran", labels=["target"]
    )
    reads.add_metric(["primary"], database.primary_reads)
    reads.add_metric(["replica"], sum(replica.reads for replica in database.replicas))
    usable = GaugeMetricFamily("lookalike_replica_usable", "1 while the replica serves reads", labels=["replica"])
    lag = GaugeMetricFamily(
        "lookalike_replica_lag_seconds", "Replica replay lag (seconds; NaN when unknown)", labels=["replica"]
    )
    lag_bytes = GaugeMetricFamily(
        "lookalike_replica_lag_bytes", "WAL bytes the replica has not replayed", labels=["replica"]
    )
    for replica in database.replicas:
        label = [replica.label]
        usable.add_metric(label, 1.0 if replica.usable else 0.0)
        lag.add_metric(label, float("nan") if replica.lag_s is None else replica.lag_s)
        lag_bytes.add_metric(label, float("nan") if replica.lag_bytes is None else float(replica.lag_bytes))
    yield from (reads, usable, lag, lag_bytes)


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
        self.runtime = _RuntimeCollector()
        self.registry.register(self.runtime)

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


# --- endpoints -----------------------------------------------------------------------------


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def health(request: Request) -> JSONResponse:
    """Liveness and readiness: the database answers; which models are loaded; queue and pool."""
    health: HealthService = request.app.state.services.health
    now = health.snapshot()
    models = ModelsStatus(loaded=now.models_loaded, embedQueueDepth=now.embed_queue_depth)
    pool = PoolStatus(size=now.pool_size, idle=now.pool_idle, max=now.pool_max)
    if not await health.database_answers():
        down = HealthUnavailable(
            error="database unavailable, retry shortly",
            code="service_unavailable",
            status="unavailable",
            database="down",
            models=models,
            pool=pool,
        )
        return model_response(down, 503, {"Retry-After": "2"})
    database = request.app.state.services.database
    replicas = [ReplicaStatus(**replica) for replica in database.describe()]
    return model_response(
        Health(status="ok", database="ok", models=models, pool=pool, reads=database.reads_from, replicas=replicas)
    )
