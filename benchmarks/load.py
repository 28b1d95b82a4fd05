"""Load: many concurrent clients mixing search, Search by Image, reverse image search and ingest.

    python -m benchmarks.load                           # 200 clients for 60 s
    python -m benchmarks.load --clients 50 --duration 10 --out bench-results/load-small.json

Starts `lookalike serve` on 127.0.0.1 (embedded PostgreSQL in a temporary directory, the
offline test model), seeds an index with products from a loopback image server, then runs
`--clients` concurrent clients for `--duration` seconds. Each client loops: it picks an
operation by weight, sends it, and on 503/429 waits the Retry-After (capped at 1 s) like a
polite client. All traffic goes to loopback and stops by itself.

Measured and written as JSON (default bench-results/load.json): status counts per operation,
error rates (5xx other than the 503 load shedding, client timeouts), latency percentiles of
successful requests, throughput, and the RSS of the service (and of its PostgreSQL) sampled
every second; then a check that every acknowledged product is stored with its vector.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.ingest_bench import stop_service
from tests.helpers import product_image

KEY = "load-admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {KEY}"}
MODEL = {"name": "vit_tiny_patch16_224", "pretrained": False, "imageSize": 64, "seed": 0}
# Operation weights: mostly reads, as a storefront sees them; ingest in batches of 4.
DEFAULT_MIX = {"text": 3, "browse": 2, "get": 2, "image": 2, "reverse": 2, "ingest": 1}
REQUEST_TIMEOUT_S = 30.0


def _data_url(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


@dataclass
class Target:
    base_url: str  # http://127.0.0.1:<port>
    index: str
    index_id: str

    @property
    def api(self) -> str:
        return f"{self.base_url}/api/v1/indexes/{self.index}"


@dataclass
class Results:
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    codes: Counter[str] = field(default_factory=Counter)  # error codes of 4xx/5xx answers
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    acked: set[str] = field(default_factory=set)
    timeouts: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    missing_retry_after: int = 0


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    def json(self) -> Any:
        return json.loads(self.content)


class RawConnection:
    """One keep-alive HTTP/1.1 connection per simulated client, on plain asyncio streams.

    httpx's AsyncClient does not scale to hundreds of concurrent requests from one process
    (measured here: 320 requests/s with 1 connection, 120 with 20), so it would measure
    itself rather than the service; this speaks just enough HTTP/1.1 for our JSON API
    (Content-Length bodies both ways).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None

    async def request(self, method: str, path: str, body: Any, headers: dict[str, str]) -> RawResponse:
        payload = json.dumps(body).encode() if body is not None else b""
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(payload)}"]
        head += ["Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        for attempt in range(2):  # a keep-alive connection the server closed meanwhile: reconnect once
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            assert self._reader is not None and self._writer is not None
            try:
                self._writer.write(data)
                await self._writer.drain()
                status_line = await self._reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed before a response")
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
                continue
            response_headers: dict[str, str] = {}
            while (line := await self._reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                response_headers[name.strip().lower()] = value.strip()
            length = int(response_headers.get("content-length", "0"))
            content = await self._reader.readexactly(length)
            if response_headers.get("connection", "").lower() == "close":
                await self.close()
            return RawResponse(int(status_line.split()[1]), response_headers, content)
        raise ConnectionError("unreachable")


async def _client(
    n: int,
    target: Target,
    mix: dict[str, int],
    queries: list[str],
    deadline: float,
    results: Results,
) -> None:
    rng = random.Random(n)
    ops, weights = list(mix), list(mix.values())
    url = httpx.URL(target.api)
    conn = RawConnection(url.host, url.port or 80)
    read = {"x-marqo-index-id": target.index_id}
    batch = 0
    while time.monotonic() < deadline:
        op = rng.choices(ops, weights)[0]
        if op == "text":
            call = ("POST", "/search", {"q": rng.choice(["product", "acme shoe", "blue", "seed"]), "limit": 10}, read)
        elif op == "browse":
            call = ("POST", "/search", {"q": "*", "filter": "brand:Acme AND price:[* TO 50]", "limit": 20}, read)
        elif op == "get":
            ids = [f"seed-{rng.randrange(200)}" for _ in range(5)]
            call = ("POST", "/get-documents", {"documentIds": ids}, read)
        elif op == "image":
            call = ("POST", "/search", {"q": rng.choice(queries), "limit": 10}, read)
        elif op == "reverse":
            call = ("POST", "/reverse-image-search", {"q": rng.choice(queries), "limit": 5}, read)
        else:
            batch += 1
            docs = [
                {
                    "_id": f"load-{n}-{batch}-{i}",
                    "productTitle": f"Load product {n} {batch} {i}",
                    "price": rng.randrange(1, 100),
                    "brand": "Acme",
                    "variantImageUrl": _data_url(product_image(10_000 + n * 1000 + batch * 4 + i, size=64)),
                }
                for i in range(4)
            ]
            call = ("POST", "/documents", {"documents": docs}, ADMIN)
        method, suffix, body, headers = call
        started = time.monotonic()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                r = await conn.request(method, url.path + suffix, body, headers)
        except TimeoutError:
            results.timeouts[op] += 1
            await conn.close()
            continue
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            results.transport_errors[f"{op}: {type(exc).__name__}"] += 1
            await conn.close()
            await asyncio.sleep(0.1)
            continue
        elapsed = time.monotonic() - started
        results.statuses[op][r.status_code] += 1
        if r.status_code == 200:
            results.latencies[op].append(elapsed)
            if op == "ingest":
                results.acked |= {i["_id"] for i in r.json()["items"] if i["status"] == 200}
        else:
            try:
                results.codes[f"{r.status_code} {r.json().get('code')}"] += 1
            except ValueError:
                results.codes[f"{r.status_code} (not JSON)"] += 1
            if r.status_code in (429, 503):
                retry = r.headers.get("retry-after", "")
                if not retry.isdigit():
                    results.missing_retry_after += 1
                await asyncio.sleep(min(float(retry or 1), 1.0))
    await conn.close()


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99), "max_ms": round(ordered[-1] * 1000, 1)}


_GAUGES = {
    "lookalike_http_requests_in_flight": "in_flight",
    "lookalike_embed_queue_depth": "embed_queue",
    "lookalike_db_pool_in_use": "db_in_use",
}


async def _scrape(http: httpx.AsyncClient, base_url: str) -> dict[str, float]:
    """The service's own gauges from /metrics (never gated by admission control)."""
    try:
        text = (await http.get(base_url + "/metrics", timeout=5)).text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _GAUGES:
            values[_GAUGES[name]] = float(value)
    return values


async def _sample_rss(
    pids: dict[str, list[int]], stop: asyncio.Event, every_s: float, base_url: str
) -> list[dict[str, float]]:
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    http = httpx.AsyncClient()
    while not stop.is_set():
        sample: dict[str, float] = {"t_s": round(time.monotonic() - started, 1), **await _scrape(http, base_url)}
        for name, group in pids.items():
            total = 0
            for pid in group:
                try:
                    total += psutil.Process(pid).memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            sample[f"{name}_rss_mb"] = round(total / 2**20, 1)
        samples.append(sample)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
    await http.aclose()
    return samples


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def run_load(
    target: Target,
    *,
    clients: int,
    duration_s: float,
    mix: dict[str, int] | None = None,
    rss_pids: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Drive the service at `target`; returns the measurements (see the module docstring)."""
    mix = mix or DEFAULT_MIX
    queries = [_data_url(product_image(seed, size=96)) for seed in range(0, 200, 10)]
    results = Results()
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(rss_pids or {}, stop, 1.0, target.base_url))
    cpu_pids = {**(rss_pids or {}), "load_client": [os.getpid()]}
    cpu_before = {name: _cpu_seconds(group) for name, group in cpu_pids.items()}
    started = time.monotonic()
    deadline = time.monotonic() + duration_s
    await asyncio.gather(*(_client(n, target, mix, queries, deadline, results) for n in range(clients)))
    wall = time.monotonic() - started
    cpu = {name: round(_cpu_seconds(group) - cpu_before[name], 1) for name, group in cpu_pids.items()}
    stop.set()
    rss = await sampler
    server_side = await _server_latency(target.base_url)
    lost = await _lost_products(target, results.acked)
    total = sum(sum(c.values()) for c in results.statuses.values())
    server_errors = sum(n for c in results.statuses.values() for s, n in c.items() if s >= 500 and s != 503)
    shed = sum(c[503] + c[429] for c in results.statuses.values())
    report: dict[str, Any] = {
        "clients": clients,
        "duration_s": duration_s,
        "wall_s": round(wall, 1),
        "requests": total,
        "throughput_rps": round(total / wall, 1),
        "ok_rps": round(sum(c[200] for c in results.statuses.values()) / wall, 1),
        "server_errors_excluding_503": server_errors,
        "server_error_rate": round(server_errors / max(total, 1), 5),
        "shed_503_429": shed,
        "shed_rate": round(shed / max(total, 1), 4),
        "client_timeouts": sum(results.timeouts.values()),
        "transport_errors": dict(results.transport_errors),
        "responses_503_without_retry_after": results.missing_retry_after,
        "error_codes": dict(results.codes),
        "per_operation": {
            op: {"statuses": dict(results.statuses[op]), **_percentiles(results.latencies[op])}
            for op in sorted(results.statuses)
        },
        "server_side_latency": server_side,
        "cpu_seconds": cpu,  # per process group, during the run (the client shares the machine)
        "acknowledged_products": len(results.acked),
        "acknowledged_products_lost": lost,
        "rss_samples": rss,
    }
    for gauge in _GAUGES.values():
        values = [s[gauge] for s in rss if gauge in s]
        if values:
            report[f"{gauge}_max"] = max(values)
    for name in rss_pids or {}:
        values = [s[f"{name}_rss_mb"] for s in rss if f"{name}_rss_mb" in s]
        if values:
            third = max(1, len(values) // 3)
            report[f"{name}_rss_mb"] = {
                "start": values[0],
                "peak": max(values),
                "end": values[-1],
                # Growth between the first and last third of the run: flat when nothing accumulates.
                "median_first_third": statistics.median(values[:third]),
                "median_last_third": statistics.median(values[-third:]),
            }
    return report


async def _server_latency(base_url: str) -> dict[str, dict[str, float]]:
    """Mean latency and count per route as the service measured it (from its /metrics histogram).

    Compared with the client's numbers it tells time spent in the service from time spent
    queueing in front of it (sockets, the event loop, the client itself).
    """
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(base_url + "/metrics")).text
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line.startswith("lookalike_http_request_duration_seconds_"):
            continue
        name, _, value = line.rpartition(" ")
        route = name[name.find('route="') + 7 :].split('"', 1)[0]
        status = name[name.find('status="') + 8 :].split('"', 1)[0]
        key = f"{route} {status}"
        if name.startswith("lookalike_http_request_duration_seconds_sum"):
            sums[key] += float(value)
        elif name.startswith("lookalike_http_request_duration_seconds_count"):
            counts[key] += float(value)
    return {
        key: {"count": counts[key], "mean_ms": round(1000 * sums[key] / counts[key], 1)}
        for key in sorted(counts)
        if counts[key] and "/api/" in key
    }


async def _lost_products(target: Target, acked: set[str]) -> int:
    """How many acknowledged products get-documents cannot find (must be 0)."""
    lost = 0
    ids = sorted(acked)
    async with httpx.AsyncClient(timeout=60) as http:
        for start in range(0, len(ids), 100):
            r = await http.post(
                target.api + "/get-documents", json={"documentIds": ids[start : start + 100]}, headers=ADMIN
            )
            r.raise_for_status()
            lost += sum(1 for d in r.json()["results"] if not d["_found"])
        stats = (await http.get(target.api + "/stats", headers=ADMIN)).json()
    if stats["numberOfDocuments"] != stats["numberOfVectors"]:
        lost += abs(stats["numberOfDocuments"] - stats["numberOfVectors"])
    return lost


async def seed_index(base_url: str, index: str, products: int, image_url: Any) -> Target:
    """Create `index` (reverse search on) and add `products` products whose images come from `image_url(i)`."""
    async with httpx.AsyncClient(timeout=120) as http:
        api = f"{base_url}/api/v1/indexes/{index}"
        r = await http.post(api, json={"model": MODEL, "reverseImageSearch": {"enabled": True}}, headers=ADMIN)
        r.raise_for_status()
        index_id = r.json()["indexId"]
        for start in range(0, products, 64):
            docs = [
                {
                    "_id": f"seed-{i}",
                    "productTitle": f"Seed product {i} {'shoe' if i % 3 else 'blue'}",
                    "price": i % 100,
                    "brand": "Acme" if i % 2 else "Other",
                    "variantImageUrl": image_url(i),
                }
                for i in range(start, min(products, start + 64))
            ]
            r = await http.post(api + "/documents", json={"documents": docs}, headers=ADMIN)
            r.raise_for_status()
            assert not r.json()["errors"], r.text[:500]
    return Target(base_url, index, index_id)


# -- the command -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_pids(pgdata: Path) -> list[int]:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return []
    postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
    return [postmaster.pid, *(p.pid for p in postmaster.children(recursive=True))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--products", type=int, default=200, help="products seeded before the load")
    parser.add_argument("--out", type=Path, default=Path("bench-results/load.json"))
    args = parser.parse_args(argv)

    from tests.imageserver import ImageServer

    with tempfile.TemporaryDirectory(prefix="lookalike-load-") as tmp, ImageServer() as images:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
        env.update(LOOKALIKE_DATA_DIR=tmp, LOOKALIKE_API_KEY=KEY, LOOKALIKE_IMAGE_FETCH_ALLOWLIST="127.0.0.1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"], env=env
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("lookalike serve did not become healthy")
                time.sleep(0.3)
            urls = [images.add(f"/seed/{i}.jpg", product_image(i, size=96)) for i in range(args.products)]
            target = asyncio.run(seed_index(base, "load", args.products, lambda i: urls[i]))
            pids = {"service": [proc.pid], "postgres": _postgres_pids(Path(tmp) / "pgdata")}
            print(f"seeded {args.products} products; {args.clients} clients for {args.duration:g} s ...", flush=True)
            report = asyncio.run(run_load(target, clients=args.clients, duration_s=args.duration, rss_pids=pids))
        finally:
            stop_service(proc)
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    report["command"] = "python -m benchmarks.load " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    summary = {k: v for k, v in report.items() if k not in ("rss_samples", "per_operation", "machine")}
    print(json.dumps(summary, indent=2))
    for op, data in report["per_operation"].items():
        print(f"  {op:8s} {data}")
    print(f"wrote {args.out}")
    return 0 if report["server_errors_excluding_503"] == 0 and report["acknowledged_products_lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
