"""The `lookalike` command: serve, migrate, models pull."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from app.config import Settings


def _serve(args: argparse.Namespace) -> int:
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
    serve.add_argument(
        "--graceful-timeout", type=int, default=30, help="seconds to finish in-flight requests"
    )
    serve.add_argument("--limit-concurrency", type=int, default=512, help="connections beyond this get 503")
    serve.set_defaults(func=_serve)

    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.add_argument("--revision", default="head")
    mig.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead (e.g. base)")
    mig.set_defaults(func=_migrate)

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
