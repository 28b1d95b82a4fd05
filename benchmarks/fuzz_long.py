"""The API fuzzer of tests/test_fuzz_api.py, run for minutes against `lookalike serve`.

    python -m benchmarks.fuzz_long                       # 10 minutes
    python -m benchmarks.fuzz_long --minutes 2 --schemathesis-examples 50

Starts `lookalike serve` on 127.0.0.1 (embedded PostgreSQL in a temporary directory,
allow-list 127.0.0.1 for a loopback image server), creates the sentinel and scratch
indexes, then draws requests from the same hypothesis strategies and checks every
response with the same oracle (no 5xx, SPEC error bodies, 401 for credentials that can
never be valid, no 5xx batch items, no cross-index results), in rounds of 500 examples
with fresh seeds until the time is up. Then schemathesis generates requests from
/openapi.json for every operation (schema-valid and schema-violating) and checks status
codes, content types, headers and bodies against it. At the end the sentinel products
must be intact and the product/vector counts equal. Everything goes to loopback only.
Writes a JSON summary (default bench-results/fuzz-long.json); exits 1 on any finding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, reject, seed, settings

from benchmarks.ingest_bench import stop_service
from tests.conftest import ADMIN, ADMIN_KEY
from tests.imageserver import ImageServer
from tests.test_fuzz_api import STATS, Case, World, cases, check, make_world, run_schemathesis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_DATA_DIR=tmp, LOOKALIKE_API_KEY=ADMIN_KEY, LOOKALIKE_IMAGE_FETCH_ALLOWLIST="127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"], env=env
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("lookalike serve did not become healthy")


def fuzz_rounds(base_url: str, world: World, minutes: float, per_round: int) -> tuple[int, list[str]]:
    """Rounds of `per_round` hypothesis examples with fresh seeds until `minutes` are up."""
    findings: list[str] = []
    requests = 0
    deadline = time.monotonic() + minutes * 60
    client = httpx.Client(base_url=base_url, timeout=60)
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1

        @seed(random.getrandbits(64))
        @settings(
            max_examples=per_round,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=True,
        )
        @given(case=cases(world))
        def run(case: Case) -> None:
            nonlocal requests
            requests += 1
            started = time.monotonic()
            try:
                r = client.request(
                    case.endpoint.method, case.path(), content=case.content(), headers=case.headers(world)
                )
            except httpx.LocalProtocolError:
                reject()  # a header value HTTP/1.1 cannot carry (the in-process CI run sends those too)
            check(case, world, r.status_code, r.headers, r.content, time.monotonic() - started)

        try:
            run()
        except Exception as exc:  # hypothesis re-raises the (shrunk) finding(s)
            findings.append(f"round {rounds}: {type(exc).__name__}: {exc}"[:5000])
            print(findings[-1][:3000], flush=True)
        print(f"round {rounds}: {requests} requests, {len(findings)} findings", flush=True)
    client.close()
    return requests, findings


class _SyncApi:
    """Just enough of httpx.AsyncClient for `make_world`, over a sync client in a thread."""

    def __init__(self, base_url: str) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=120)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await asyncio.to_thread(self._client.post, url, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="time for the hypothesis rounds")
    parser.add_argument("--round", type=int, default=500, help="examples per hypothesis round")
    parser.add_argument("--schemathesis-examples", type=int, default=100, help="per operation and mode; 0 = skip")
    parser.add_argument("--out", type=Path, default=Path("bench-results/fuzz-long.json"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lookalike-fuzz-") as tmp, ImageServer() as images:
        port = _free_port()
        proc = _start(tmp, port)
        base = f"http://127.0.0.1:{port}"
        try:
            world = asyncio.run(make_world(_SyncApi(base), images))  # type: ignore[arg-type]
            requests, findings = fuzz_rounds(base, world, args.minutes, args.round)
            st_failures: dict[tuple[str, str], str] = {}
            if args.schemathesis_examples:
                print("schemathesis ...", flush=True)
                st_failures = run_schemathesis(base, world.scratch, args.schemathesis_examples)
            with httpx.Client(base_url=base, timeout=60) as client:
                r = client.post(
                    f"/api/v1/indexes/{world.sentinel}/get-documents",
                    json={"documentIds": list(world.sentinel_docs)},
                    headers=ADMIN,
                )
                sentinel_intact = {d["_id"]: d for d in r.json()["results"]} == world.sentinel_docs
                consistent = True
                for index in client.get("/api/v1/indexes", headers=ADMIN).json()["results"]:
                    stats = client.get(f"/api/v1/indexes/{index['indexName']}/stats", headers=ADMIN).json()
                    consistent &= stats["numberOfDocuments"] == stats["numberOfVectors"]
        finally:
            stop_service(proc)
    by_status: dict[str, int] = {}
    for (_, status), n in STATS.items():
        by_status[str(status)] = by_status.get(str(status), 0) + n
    report = {
        "command": "python -m benchmarks.fuzz_long " + " ".join(argv if argv is not None else sys.argv[1:]),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "hypothesis_requests": requests,
        "responses_by_status": dict(sorted(by_status.items())),
        "responses_by_endpoint_and_status": {f"{k[0]} -> {k[1]}": n for k, n in sorted(STATS.items())},
        "findings": findings,
        "schemathesis_examples_per_operation_and_mode": args.schemathesis_examples,
        "schemathesis_failures": {f"{op} ({mode})": text for (op, mode), text in st_failures.items()},
        "sentinel_intact": sentinel_intact,
        "products_equal_vectors": consistent,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "responses_by_endpoint_and_status"}, indent=2))
    ok = not findings and not st_failures and sentinel_intact and consistent
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
