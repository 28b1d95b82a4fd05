"""`lookalike demo`: one command from a fresh install to a searchable sample shop.

It starts the service (embedded PostgreSQL unless LOOKALIKE_DATABASE_URL), creates an
index with reverse image search on, loads a generated catalog (brands, prices,
collections; images as data URLs, so nothing is fetched from anywhere), writes a
"shopper's photo" of one product, and prints the web page URL, the index id and a
curl command that finds that product.

The catalog comes from the package's sample generator (app/samples/wild.py, the same
one the benchmarks use). The model is the default
pretrained one when its weights can be had, else the documented offline
random-weight model (quality is then a lower bound; the demo says so).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from app.config import Settings
from app.samples import wild

if TYPE_CHECKING:  # app.main builds the whole service; the demo imports it only when it runs
    from app.main import Services
    from app.storage.indexes import IndexRecord

_IMAGE_SIDE = 256  # catalog images as data URLs: small enough that hits stay readable
_PHOTO_SIDE = 480  # the shopper's photo: its base64 must fit in one shell argument (128 KiB)


@dataclass(frozen=True)
class DemoOptions:
    products: int = 100
    seed: int = 0
    index: str = "demo"
    host: str = "127.0.0.1"
    port: int = 8000
    offline: bool = False  # skip trying pretrained weights
    model: str | None = None  # a timm name or a JSON model setting (e.g. an open_clip model); None = the default
    reset: bool = False  # drop and recreate the demo index


@dataclass(frozen=True)
class DemoInfo:
    base_url: str
    index_name: str
    index_id: str
    model: str
    photo: Path
    photo_product_id: str
    photo_product_title: str
    page_url: str
    curl: str


@dataclass
class SampleProduct:
    doc: dict[str, Any]
    image: Image.Image  # the catalog photo
    cutout: Image.Image  # RGBA product alone (shopper photos are composed from it)


# --- the sample catalog ---------------------------------------------------------------------


def _jpeg_data_url(image: Image.Image, side: int, quality: int = 85) -> str:
    image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def sample_catalog(n: int, seed: int = 0) -> list[SampleProduct]:
    """`n` products with brands, prices and collections, from the package's sample generator."""
    return [
        SampleProduct({"_id": item.id, **item.metadata}, item.image, item.cutout)
        for item in wild.generate_catalog(n, seed)
    ]


def shopper_photo(product: SampleProduct, seed: int) -> Image.Image:
    """The product as a shopper might photograph it: off-centre, tilted, on a busy table, re-lit."""
    rng = random.Random(seed)
    w, h = 640, 480
    photo = Image.new("RGB", (w, h), (196, 178, 150))
    d = ImageDraw.Draw(photo)
    for _ in range(40):  # clutter: wood grain and objects
        x, y = rng.randrange(w), rng.randrange(h)
        colour = tuple(rng.randrange(90, 230) for _ in range(3))
        d.rectangle((x, y, x + rng.randrange(10, 120), y + rng.randrange(3, 14)), fill=colour)
    item = product.cutout.convert("RGBA")
    item.thumbnail((300, 300))
    item = item.rotate(rng.uniform(-12, 12), expand=True, resample=Image.Resampling.BICUBIC)
    photo.paste(item, (rng.randrange(40, w - item.width - 40), rng.randrange(20, h - item.height - 20)), item)
    photo = photo.filter(ImageFilter.GaussianBlur(0.6))
    return ImageEnhance.Brightness(photo).enhance(1.08)


# --- index set-up (in process: the operator's own machine; no admin key needed) -----------------


def parse_model_option(raw: str) -> dict[str, Any] | str:
    """`--model`: a timm name, or a JSON model setting such as an open_clip model."""
    if raw.lstrip().startswith("{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--model: not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise SystemExit("--model: a JSON model setting must be an object")
        return value
    return raw


async def _chosen_model(svc: Services, raw: str) -> tuple[dict[str, Any] | str, str]:
    from app.vision.model import ModelSpec, ModelUnavailableError

    model = parse_model_option(raw)
    try:
        spec = ModelSpec.parse(model)
        await svc.vision.load_model(spec)
    except (ValueError, ModelUnavailableError) as exc:
        raise SystemExit(f"--model: {exc}") from exc
    note = spec.timm_name if spec.is_pretrained else f"{spec.name} with random weights (similarity is a lower bound)"
    return model, note + (" — text search ranks by the pictures too" if spec.has_text else "")


async def _choose_model(
    svc: Services, offline: bool, model: str | None = None
) -> tuple[dict[str, Any] | str | None, str]:
    from app.vision.model import OFFLINE_TEST_MODEL, ModelSpec, ModelUnavailableError

    if model is not None:
        return await _chosen_model(svc, model)
    if not offline:
        try:
            spec = ModelSpec.parse(None)
            await svc.vision.load_model(spec)
            return None, f"{spec.timm_name} (pretrained)"
        except ModelUnavailableError:
            pass
    name = OFFLINE_TEST_MODEL["name"]
    return dict(OFFLINE_TEST_MODEL), (
        f"{name} with random weights (offline; pretrained weights unavailable, so similarity is a lower bound — "
        "see `lookalike models pull`)"
    )


async def _create_index(svc: Services, name: str, model: dict[str, Any] | str | None) -> IndexRecord:
    # The same path as POST /api/v1/indexes/{name}, minus the HTTP admin check: the demo runs
    # on the operator's machine, which may not know the generated admin key any more.
    from app.domain import index_admin

    body = {"model": model, "reverseImageSearch": {"enabled": True}}
    return await index_admin.create_index(svc.pool, svc.vision, name, body)


async def prepare(svc: Services, options: DemoOptions, data_dir: Path, say: Callable[[str], None]) -> DemoInfo:
    """Create (or reuse) the demo index, load the sample catalog, write the shopper's photo."""
    from app.domain import index_settings
    from app.storage import indexes

    index_settings.validate_index_name(options.index)
    record = await indexes.get_index(svc.pool, options.index)
    if record is not None and options.reset:
        await svc.indexes.delete(record)
        record = None
    if record is not None and not record.reverse_search_enabled:
        raise SystemExit(
            f"index {options.index!r} exists without reverse image search; "
            "run `lookalike demo --reset` to recreate it or `--index NAME` to use another name"
        )
    say(f"generating {options.products} sample products …")
    catalog = await asyncio.to_thread(sample_catalog, options.products, options.seed)
    if record is None:
        model, model_note = await _choose_model(svc, options.offline, options.model)
        record = await _create_index(svc, options.index, model)
    else:
        model_note = f"{record.model.get('name')} (existing index)"
    stats = await indexes.index_stats(svc.pool, record)
    if stats["products"] < len(catalog):
        say(f"loading {len(catalog)} products into index {options.index!r} …")
        docs = [{**p.doc, "variantImageUrl": _jpeg_data_url(p.image, _IMAGE_SIDE)} for p in catalog]
        failed = 0
        for start in range(0, len(docs), 32):
            results = await svc.ingest.add_documents(record, docs[start : start + 32])
            failed += sum(1 for r in results if r.status >= 300)
        if failed:
            say(f"warning: {failed} sample products failed to load")
    target = catalog[len(catalog) // 3]
    photo_path = data_dir / "demo" / "shopper-photo.jpg"
    photo_path.parent.mkdir(parents=True, exist_ok=True)
    photo = shopper_photo(target, options.seed)
    photo.thumbnail((_PHOTO_SIDE, _PHOTO_SIDE))
    photo.save(photo_path, "JPEG", quality=85)
    return DemoInfo(
        base_url="",
        index_name=record.name,
        index_id=record.index_id,
        model=model_note,
        photo=photo_path,
        photo_product_id=target.doc["_id"],
        photo_product_title=target.doc["productTitle"],
        page_url="",
        curl="",
    )


def curl_command(base_url: str, index: str, index_id: str, photo: Path) -> str:
    body = (
        '{\\"q\\": \\"data:image/jpeg;base64,$(base64 -w0 ' + shlex.quote(str(photo)) + ')\\", '
        '\\"limit\\": 5, \\"attributesToRetrieve\\": [\\"productTitle\\", \\"brand\\", \\"price\\"]}'
    )
    return (
        f"curl -s -X POST {base_url}/api/v1/indexes/{index}/reverse-image-search \\\n"
        f"  -H 'x-marqo-index-id: {index_id}' -H 'content-type: application/json' \\\n"
        f'  -d "{body}"'
    )


def banner(info: DemoInfo, settings: Settings) -> str:
    key_note = (
        "the value of LOOKALIKE_API_KEY"
        if settings.api_key
        else "printed once when this data directory was first used (only its hash is stored); "
        "set LOOKALIKE_API_KEY to choose your own"
    )
    return "\n".join(
        [
            "",
            "lookalike demo is running — Ctrl-C to stop",
            "",
            f"  web page   {info.page_url}",
            f"  API docs   {info.base_url}/docs",
            f"  index      {info.index_name}",
            f"  index id   {info.index_id}   (send as x-marqo-index-id on search requests)",
            f"  admin key  {key_note}",
            f"  model      {info.model}",
            f"  photo      {info.photo}  (a shopper's photo of {info.photo_product_id}: {info.photo_product_title})",
            "",
            "Reverse image search with that photo:",
            "",
            info.curl,
            "",
        ]
    )


async def run(
    options: DemoOptions,
    *,
    settings: Settings | None = None,
    out: TextIO | None = None,
    on_ready: Callable[[DemoInfo, Any], None] | None = None,
) -> int:
    """Serve the demo until the server stops (Ctrl-C / SIGTERM, or `server.should_exit` from `on_ready`)."""
    import uvicorn

    from app.main import create_app

    out = out or sys.stdout
    settings = settings or Settings.from_env()

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level="warning",
        log_config=None,  # the command's logging (app.logs) stays in charge
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    where = "LOOKALIKE_DATABASE_URL" if settings.database_url else f"embedded PostgreSQL in {settings.data_dir}"
    say(f"starting lookalike ({where}) …")
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():  # start-up failed (port in use, database): uvicorn has said why
            await serving
            return 1
        await asyncio.sleep(0.05)
    try:
        info = await prepare(app.state.services, options, settings.data_dir, say)
    except BaseException:
        server.should_exit = True
        await serving
        raise
    port = server.servers[0].sockets[0].getsockname()[1]
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host
    base_url = f"http://{host}:{port}"
    info = DemoInfo(
        **{
            **info.__dict__,
            "base_url": base_url,
            "page_url": f"{base_url}/ui#index={info.index_name}&indexId={info.index_id}",
            "curl": curl_command(base_url, info.index_name, info.index_id, info.photo),
        }
    )
    say(banner(info, settings))
    if on_ready is not None:
        on_ready(info, server)
    await serving
    return 0
