"""The `lookalike` command: serve, migrate, worker, demo, import, bench, models pull."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from app.config import Settings


def _serve(args: argparse.Namespace) -> int:
    logging_options = _uvicorn_logging(args)  # first: importing the app already logs (alembic)

    import uvicorn

    from app.main import create_app

    settings = Settings.from_env()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        limit_concurrency=args.limit_concurrency,
        **logging_options,
    )
    return 0


def _uvicorn_logging(args: argparse.Namespace) -> dict[str, object]:
    """JSON lines (default) or plain text; our access log replaces uvicorn's in both.

    uvicorn's access log would print raw paths with query strings; ours logs route templates
    and request ids (app/http/ops.py).
    """
    if args.log_format == "json":
        from app.http.ops import configure_json_logging

        configure_json_logging(args.log_level)
        return {"log_config": None, "access_log": False}
    return {"access_log": False}


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
    from app.vision.model import EmbeddingModel, ModelSpec, ModelUnavailableError

    settings = Settings.from_env()
    spec = ModelSpec.parse(args.model)
    try:
        model = EmbeddingModel.load(spec, settings.model_weights)
    except ModelUnavailableError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{spec.name}: ready ({model.dim}-d embeddings)")
    return 0


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


BENCH_NAMES = ("ann", "e2e", "ingest", "scale", "quality")


def _bench_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCH_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown) or repr(text)}; choose from {','.join(BENCH_NAMES)}"
        )
    return names


def _checkout_root() -> Path | None:
    """The source checkout holding `benchmarks/` (not part of the installed package)."""
    for candidate in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (candidate / "benchmarks" / "suite.py").is_file():
            return candidate
    return None


def _bench(args: argparse.Namespace) -> int:
    root = _checkout_root()
    if root is None:
        print(
            "lookalike bench runs the benchmarks of a source checkout: no benchmarks/ next to the installed "
            "app package nor in the current directory (run it from the repository)",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import suite

    out = args.out or (Path("bench-results/quick") if args.quick else Path("bench-results"))
    return suite.run_suite(root, quick=args.quick, only=args.only, out=out, echo=not args.quiet)


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
    serve.add_argument("--log-format", choices=("json", "text"), default="json", help="log lines on stderr")
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

    bench = sub.add_parser(
        "bench",
        help="run the performance suite (from a source checkout): JSON + PNG per benchmark, summary.json",
        description="Runs ann, e2e, ingest, scale and quality benchmarks one after the other, each in its own "
        "process, writing JSON and PNG into --out, then summary.json and a table. --quick: minutes on 2 cores; "
        "otherwise the published sizes (hours). Exit status 1 if any benchmark failed.",
    )
    bench.add_argument("--quick", action="store_true", help="small sizes (about 5 minutes on 2 cores)")
    bench.add_argument(
        "--only", type=_bench_names, metavar="NAMES", help=f"comma-separated subset of {','.join(BENCH_NAMES)}"
    )
    bench.add_argument(
        "--out", type=Path, help="output directory (default: bench-results/quick with --quick, else bench-results)"
    )
    bench.add_argument("--quiet", action="store_true", help="do not echo the benchmarks' output (logs are kept)")
    bench.set_defaults(func=_bench)

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
    pull.add_argument("model", nargs="?", default=None, help="timm name with tag; default: the default model")
    pull.set_defaults(func=_models_pull)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
