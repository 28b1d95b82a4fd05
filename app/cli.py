"""The `lookalike` command: serve, migrate, worker, demo, import, models pull.

The benchmark suite is not part of the package: `python -m benchmarks` in a checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app.config import Settings
from app.logs import LOG_FORMATS, choose_format, configure_logging


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = Settings.from_env()
    app = create_app(settings)
    # Logging is configured (main); uvicorn's access log is off: it would print raw paths with
    # query strings, ours logs route templates and request ids (app/http/ops.py).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=args.graceful_timeout,
        limit_concurrency=args.limit_concurrency,
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from app.main import resolve_database_url
    from app.storage import migrate

    settings = Settings.from_env()
    url, embedded = asyncio.run(resolve_database_url(settings))
    if args.downgrade:
        migrate.downgrade(url, args.downgrade)
    else:
        migrate.upgrade(url, args.revision)
    if embedded is not None:
        from app.storage import db

        db.release_embedded(embedded)
    print("migrations applied", file=sys.stderr)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from app.domain.worker import EmbeddingWorker
    from app.main import resolve_database_url
    from app.storage import db, migrate
    from app.vision.model import ModelUnavailableError
    from app.vision.service import VisionService

    settings = Settings.from_env()
    log = logging.getLogger("lookalike.worker")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per image fetched would drown the progress

    async def work(url: str) -> int:
        pool = await db.create_pool(
            url, min_size=1, max_size=4, statement_timeout_ms=settings.statement_timeout_ms
        )
        vision = VisionService(settings)
        worker = EmbeddingWorker(
            pool,
            vision,
            batch_size=args.batch_size or settings.embed_batch_size,
            lease_s=settings.worker_lease_s,
            max_attempts=settings.worker_max_attempts,
            fetch_concurrency=settings.fetch_concurrency,
        )
        # SIGTERM (docker stop, Kubernetes) cancels the run: the batch in hand gives its claim back.
        runner = asyncio.current_task()
        assert runner is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runner.cancel)
        try:
            log.info("worker %s started (batch %d, lease %.0f s)", worker.name, worker.batch_size, worker.lease_s)
            await worker.check_models()
            stats = await worker.run(poll_interval_s=args.poll_interval, once=args.once, max_idle_s=args.max_idle)
        except ModelUnavailableError as exc:
            print(f"lookalike worker: {exc}", file=sys.stderr, flush=True)
            return 1
        except asyncio.CancelledError:
            log.info("worker %s stopped by a signal; unfinished claims were given back", worker.name)
            stats = worker.stats
        finally:
            await vision.aclose()
            await pool.close()
        log.info(
            "worker %s done: %d batches, %d embedded, %d failed, %d lost claims, %d features backfilled",
            worker.name, stats.batches, stats.embedded, stats.failed, stats.lost, stats.features,
        )
        return 0

    url, embedded = asyncio.run(resolve_database_url(settings))
    try:
        migrate.upgrade(url)  # under the migration lock: waits for a migrating peer, else a no-op
        return asyncio.run(work(url))
    except KeyboardInterrupt:
        return 130
    finally:
        if embedded is not None:
            db.release_embedded(embedded)


def _models_pull(args: argparse.Namespace) -> int:
    from app.vision.model import ModelSpec, ModelUnavailableError, load_model

    settings = Settings.from_env()
    try:
        spec = ModelSpec.parse(_model_argument(args.model))
    except ValueError as exc:
        print(f"model: {exc}", file=sys.stderr)
        return 2
    try:
        model = load_model(spec, settings.model_weights)
    except ModelUnavailableError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    text = ", text tower" if model.has_text else ""
    print(f"{spec.timm_name}: ready ({model.dim}-d embeddings{text})")
    return 0


def _model_argument(raw: str | None) -> object:
    """A model given on the command line: a timm name, or a JSON `model` setting (open_clip models)."""
    if raw is not None and raw.lstrip().startswith("{"):
        import json

        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from exc
    return raw


def _demo(args: argparse.Namespace) -> int:
    from app import demo

    options = demo.DemoOptions(
        products=args.products,
        seed=args.seed,
        index=args.index,
        host=args.host,
        port=args.port,
        offline=args.offline,
        reset=args.reset,
        model=args.model,
    )
    try:
        return asyncio.run(demo.run(options))
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        return 0


def _import(args: argparse.Namespace) -> int:
    from rich.console import Console

    from app.importer import ImportAborted, ImportOptions, run_import, summary

    def names(raw: str | None) -> set[str]:
        return {n.strip() for n in (raw or "").split(",") if n.strip()}

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the progress bar
    console = Console(stderr=True)
    options = ImportOptions(
        index=args.index,
        file=args.file,
        url=args.url.rstrip("/"),
        api_key=args.api_key or Settings.from_env().api_key,
        fmt=args.format,
        batch_size=args.batch_size,
        concurrency=max(1, args.concurrency),
        restart=args.restart,
        numeric=names(args.numeric),
        lists=names(args.list),
        state_path=args.state,
        failures_path=args.failures,
        quiet=args.quiet,
    )
    try:
        result = asyncio.run(run_import(options, console))
    except ImportAborted as exc:
        console.print(f"import stopped: {exc}", style="red", markup=False, soft_wrap=True)
        console.print("progress is saved; run the same command again to resume")
        return 2
    except KeyboardInterrupt:
        console.print("interrupted; progress is saved; run the same command again to resume")
        return 130
    console.print(summary(result), markup=False, highlight=False, soft_wrap=True)
    return 1 if result.failure_count or result.retry_later else 0


def _calibrate(args: argparse.Namespace) -> int:
    """Through the running service (`--url`, the admin key), or straight on its database
    (`--database-url`, an operator's fallback: the calibration then runs in this process)."""

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    if args.database_url:
        status, result = asyncio.run(_calibrate_on_database(args, progress))
    else:
        logging.getLogger("httpx").setLevel(logging.WARNING)
        status, result = _calibrate_through_service(args, progress)
    if result is None:
        return status
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        b, a = result["before"], result["after"]
        print(f"recall@1 {b['recallAt1']:.3f} -> {a['recallAt1']:.3f}, recall@10 {b['recallAt10']:.3f} -> "
              f"{a['recallAt10']:.3f} on {result['queries']} photos ({result['seconds']} s)")
        if "heldOut" in a:
            print(f"held out ({result['heldOut']} photos): recall@1 {b['heldOut']['recallAt1']:.3f} -> "
                  f"{a['heldOut']['recallAt1']:.3f}")
        print("knobs: " + ", ".join(f"{k}={v}" for k, v in result["knobs"].items()))
        if result["applied"]:
            print(f"stored in {args.index!r}'s settings")
    return 0


# Refusals that mean "this index cannot be calibrated" (exit 2) rather than "the run failed" (exit 1).
_CALIBRATE_USAGE_CODES = ("index_not_found", "reverse_search_disabled", "invalid_index_name")


def _calibration_failed(code: str, message: str) -> tuple[int, None]:
    print(f"calibration failed: {message} ({code})", file=sys.stderr)
    return (2 if code in _CALIBRATE_USAGE_CODES else 1), None


def _calibrate_through_service(args: argparse.Namespace, progress: Callable[[str], None]) -> tuple[int, Any]:
    import httpx

    from app.contract.calibrate import NDJSON

    url = f"{args.url.rstrip('/')}/api/v1/indexes/{quote(args.index, safe='')}/calibrate"
    key = args.api_key or Settings.from_env().api_key
    headers = {"Accept": NDJSON, **({"Authorization": f"Bearer {key}"} if key else {})}
    body = {"queries": args.queries, "seed": args.seed, "apply": args.apply}
    # No overall deadline (a run takes minutes); a silence of 10 minutes between lines is a hang.
    timeout = httpx.Timeout(30.0, read=600.0)
    try:
        with httpx.stream("POST", url, json=body, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                try:
                    error = response.json()
                    return _calibration_failed(str(error["code"]), str(error["error"]))
                except (ValueError, KeyError, TypeError):
                    return _calibration_failed(f"http_{response.status_code}", response.text[:300])
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if "progress" in event:
                    progress(event["progress"]["message"])
                elif "report" in event:
                    return 0, event["report"]
                else:
                    return _calibration_failed(str(event.get("code")), str(event.get("error")))
    except httpx.HTTPError as exc:
        print(f"calibration failed: {url}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1, None
    print("calibration failed: the service ended the stream without a report", file=sys.stderr)
    return 1, None


async def _calibrate_on_database(args: argparse.Namespace, progress: Callable[[str], None]) -> tuple[int, Any]:
    import dataclasses

    from app.contract.calibrate import CalibrateRequest
    from app.domain.backfill import FeatureBackfill
    from app.domain.calibrate import CalibrationReport, CalibrationService
    from app.domain.index_admin import IndexAdmin
    from app.domain.reverse import ReverseSearchService
    from app.errors import ApiError
    from app.main import resolve_database_url
    from app.storage import db
    from app.storage.replicas import Database
    from app.vision.service import VisionService

    try:  # the checks the service makes of its request
        CalibrateRequest.parse({"queries": args.queries, "seed": args.seed, "apply": args.apply})
    except ApiError as exc:
        return _calibration_failed(exc.code, exc.message)
    settings = dataclasses.replace(Settings.from_env(), database_url=args.database_url)
    url, embedded = await resolve_database_url(settings)
    pool = await db.create_pool(url, min_size=1, max_size=4, statement_timeout_ms=settings.statement_timeout_ms)
    vision = VisionService(settings)
    try:
        admin = IndexAdmin(pool, vision, FeatureBackfill(pool, vision))
        record = await admin.find(args.index)
        if record is None:
            return _calibration_failed("index_not_found", f"no index named {args.index!r}")
        primary_only = Database(
            pool,
            [],
            max_lag_s=settings.replica_max_lag_s,
            check_interval_s=settings.replica_check_interval_s,
            check_timeout_s=settings.replica_check_timeout_s,
        )
        service = CalibrationService(pool, ReverseSearchService(primary_only, vision), admin)
        async for event in service.run(record, args.queries, args.seed, args.apply):
            if isinstance(event, CalibrationReport):
                return 0, event.as_json()
            progress(event.message)
    except ApiError as exc:
        return _calibration_failed(exc.code, exc.message)
    finally:
        await vision.aclose()
        await pool.close()
        if embedded is not None:
            db.release_embedded(embedded)
    return 1, None


def _log_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="log lines on stderr: text (readable) or json (one object per line); default: "
        "LOOKALIKE_LOG_FORMAT, else text on a terminal and json otherwise",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookalike", description="reverse image search for product catalogs"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="run the HTTP API (embedded PostgreSQL unless LOOKALIKE_DATABASE_URL)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    _log_format_option(serve)
    serve.add_argument(
        "--graceful-timeout", type=int, default=30, help="seconds to finish in-flight requests"
    )
    serve.add_argument("--limit-concurrency", type=int, default=512, help="connections beyond this get 503")
    serve.set_defaults(func=_serve)

    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.add_argument("--revision", default="head")
    mig.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead (e.g. base)")
    mig.set_defaults(func=_migrate)

    dem = sub.add_parser("demo", help="serve a sample catalog with reverse image search, print a curl to try")
    dem.add_argument("--products", type=int, default=100, help="sample catalog size")
    dem.add_argument("--seed", type=int, default=0)
    dem.add_argument("--index", default="demo", help="index name")
    dem.add_argument("--host", default="127.0.0.1")
    dem.add_argument("--port", type=int, default=8000, help="0 = any free port")
    dem.add_argument("--offline", action="store_true", help="use the random-weight model without trying pretrained")
    dem.add_argument("--reset", action="store_true", help="drop and recreate the demo index")
    dem.add_argument(
        "--model",
        help="the new index's model: a timm name or a JSON model setting, e.g. "
        '\'{"library": "open_clip", "name": "ViT-B-32", "pretrained": false}\' (text search by the pictures)',
    )
    _log_format_option(dem)
    dem.set_defaults(func=_demo)

    imp = sub.add_parser(
        "import",
        help="load a JSONL or CSV catalog through a running service (batched, concurrent, resumable)",
        description="Exit status: 0 all imported, 1 some products failed (see the report), 2 stopped early.",
    )
    imp.add_argument("index", help="the index (create it first)")
    imp.add_argument("file", type=Path, help="products, one JSON object per line (.jsonl) or a CSV with a header")
    imp.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    imp.add_argument("--api-key", help="admin key (default: LOOKALIKE_API_KEY)")
    imp.add_argument("--format", choices=("jsonl", "csv"), help="default: from the file extension")
    imp.add_argument("--batch-size", type=int, default=128, help="products per request (at most 128)")
    imp.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    imp.add_argument("--restart", action="store_true", help="ignore saved progress and start over")
    imp.add_argument("--numeric", metavar="COLS", help="CSV: comma-separated columns to send as numbers")
    imp.add_argument("--list", metavar="COLS", help="CSV: comma-separated columns to split on ';' into arrays")
    imp.add_argument("--state", type=Path, help="progress file (default: FILE.INDEX.import-state.jsonl)")
    imp.add_argument("--failures", type=Path, help="failure report (default: FILE.INDEX.failures.csv)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_import)

    cal = sub.add_parser(
        "calibrate",
        help="tune an index's reverse image search knobs on wild photos made from its own products",
        description="Asks the running service (POST /api/v1/indexes/INDEX/calibrate) to make in-the-wild "
        "photos from a sample of the index's product images, measure recall@1/@10 of the current "
        "re-ranking knobs and of a sweep (half the photos held out), and with --apply store the best "
        "knobs in the index settings; progress lines go to stderr. Exit status: 0 done, 1 the run "
        "failed, 2 no such index or reverse image search off.",
    )
    cal.add_argument("index", help="the index (reverse image search enabled)")
    where = cal.add_mutually_exclusive_group()
    where.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL (default %(default)s)")
    where.add_argument(
        "--database-url",
        metavar="DB",
        help="instead: run the calibration in this process, on the service's PostgreSQL database directly "
        "(no running service needed; loads the index's model here)",
    )
    cal.add_argument("--api-key", help="admin key for --url (default: LOOKALIKE_API_KEY)")
    cal.add_argument("--queries", type=int, default=100, help="calibration photos, 2 to 1000 (default 100)")
    cal.add_argument("--seed", type=int, default=0, help="which products and photos")
    cal.add_argument("--apply", action="store_true", help="store the best knobs in the index settings")
    cal.add_argument("--json", action="store_true", help="print the report as JSON")
    cal.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    cal.set_defaults(func=_calibrate)

    worker = sub.add_parser(
        "worker",
        help="embed queued products (LOOKALIKE_INGEST_MODE=queue) and run feature backfills; any number, any host",
        description="Claims pending products from the database (FOR UPDATE SKIP LOCKED, under a lease of "
        "LOOKALIKE_WORKER_LEASE_S), fetches and embeds their images with the index's model, stores the results. "
        "Exit status 1 when an index's model cannot be loaded here.",
    )
    worker.add_argument(
        "--batch-size", type=int, default=0, help="products per claim (default: LOOKALIKE_EMBED_BATCH_SIZE)"
    )
    worker.add_argument("--poll-interval", type=float, default=2.0, help="seconds between polls of an empty queue")
    worker.add_argument("--once", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--max-idle", type=float, default=None, metavar="S", help="exit after S seconds without work")
    worker.set_defaults(func=_worker)

    models = sub.add_parser("models", help="model weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser("pull", help="download weights into the cache (for image builds)")
    pull.add_argument(
        "model",
        nargs="?",
        default=None,
        help="timm name with tag, or a JSON model setting such as "
        '\'{"library": "open_clip", "name": "hf-hub:Marqo/marqo-ecommerce-embeddings-B"}\'; default: the default model',
    )
    pull.set_defaults(func=_models_pull)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # First: importing the app and migrating already log (alembic, embedded PostgreSQL).
    try:
        configured = Settings.from_env().log_format
    except ValueError as exc:
        print(f"lookalike: {exc}", file=sys.stderr)
        return 2
    fmt = choose_format(getattr(args, "log_format", None), configured, sys.stderr)
    configure_logging(fmt, getattr(args, "log_level", "info"))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
