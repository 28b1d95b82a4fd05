"""`lookalike demo`: one command from a fresh install to a searchable sample shop.

It starts the service (embedded PostgreSQL unless LOOKALIKE_DATABASE_URL), creates an
index with reverse image search on, loads a generated catalog (brands, prices,
collections; images as data URLs, so nothing is fetched from anywhere), writes a
"shopper's photo" of one product, and prints the web page URL, the index id and a
curl command that finds that product.

The catalog comes from the benchmark generator (benchmarks/wild.py) in a source
checkout, else from the small built-in generator below. The model is the default
pretrained one when its weights can be had, else the documented offline
random-weight model (quality is then a lower bound; the demo says so).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import random
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from app.config import Settings

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
    cutout: Image.Image | None = None  # RGBA product alone, when the generator has it


# --- the sample catalog ---------------------------------------------------------------------


def _jpeg_data_url(image: Image.Image, side: int, quality: int = 85) -> str:
    image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def _benchmark_generator() -> Any:
    """benchmarks/wild.py from a source checkout (it is not part of the installed package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "wild.py"
    if not path.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location("lookalike_demo_wild", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve their module by name
        spec.loader.exec_module(module)
        return module if callable(getattr(module, "generate_catalog", None)) else None
    except Exception:  # a broken checkout must not break the demo: use the built-in generator
        sys.modules.pop("lookalike_demo_wild", None)
        return None


_BRANDS = ("Acme", "Northwind", "Lumen", "Kestrel", "Orla", "Vanta", "Piko", "Brio")
_COLOURS = {
    "red": (200, 40, 50),
    "blue": (40, 90, 200),
    "green": (40, 150, 70),
    "yellow": (235, 200, 40),
    "black": (30, 30, 34),
    "white": (238, 238, 232),
    "orange": (240, 130, 30),
    "purple": (120, 60, 160),
}
_KINDS = {
    "mug": "home",
    "bottle": "drinks",
    "shirt": "apparel",
    "box": "pantry",
    "shoe": "footwear",
    "bag": "accessories",
}
_SEASONS = ("summer", "winter", "new-in", "sale", "essentials")


def _draw_product(
    kind: str, base: tuple[int, int, int], accent: tuple[int, int, int], pattern: str, brand: str, rng: random.Random
) -> Image.Image:
    side = 320
    img = Image.new("RGB", (side, side), (250, 250, 250))
    d = ImageDraw.Draw(img)
    boxes = {
        "mug": (70, 90, 230, 260),
        "bottle": (125, 40, 195, 290),
        "shirt": (60, 70, 260, 280),
        "box": (70, 60, 250, 270),
        "shoe": (30, 150, 290, 250),
        "bag": (60, 100, 260, 280),
    }
    x0, y0, x1, y1 = boxes[kind]
    if kind in ("mug", "bottle", "bag"):
        d.rounded_rectangle((x0, y0, x1, y1), radius=24, fill=base, outline=(40, 40, 40), width=3)
    elif kind == "shoe":
        d.ellipse((x0, y0, x1, y1), fill=base, outline=(40, 40, 40), width=3)
    else:
        d.rectangle((x0, y0, x1, y1), fill=base, outline=(40, 40, 40), width=3)
    if kind == "mug":
        d.ellipse((x1 - 20, y0 + 40, x1 + 40, y0 + 120), outline=base, width=14)
    if kind == "bag":
        d.arc((x0 + 50, y0 - 60, x1 - 50, y0 + 40), 180, 360, fill=(40, 40, 40), width=8)
    if pattern == "stripes":
        for y in range(y0 + 10, y1 - 5, 22):
            d.rectangle((x0 + 6, y, x1 - 6, y + 8), fill=accent)
    elif pattern == "dots":
        for _ in range(18):
            cx, cy = rng.randint(x0 + 15, x1 - 15), rng.randint(y0 + 15, y1 - 15)
            d.ellipse((cx - 8, cy - 8, cx + 8, cy + 8), fill=accent)
    else:
        d.rectangle((x0 + 10, (y0 + y1) // 2 - 25, x1 - 10, (y0 + y1) // 2 + 25), fill=accent)
    d.text(((x0 + x1) // 2 - 4 * len(brand), (y0 + y1) // 2 - 6), brand, fill=(255, 255, 255))
    return img


def _builtin_catalog(n: int, seed: int) -> list[SampleProduct]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        kind = rng.choice(list(_KINDS))
        colour, accent = rng.sample(list(_COLOURS), 2)
        pattern = rng.choice(("stripes", "dots", "band"))
        brand = rng.choice(_BRANDS)
        image = _draw_product(kind, _COLOURS[colour], _COLOURS[accent], pattern, brand, rng)
        doc = {
            "_id": f"p{i:05d}",
            "productTitle": f"{brand} {colour} {kind}",
            "variantTitle": f"{colour} / {pattern}",
            "brand": brand,
            "price": round(rng.uniform(3, 250), 2),
            "productCollections": sorted({_KINDS[kind], rng.choice(_SEASONS)}),
            "colour": colour,
            "kind": kind,
        }
        items.append(SampleProduct(doc, image))
    return items


def sample_catalog(n: int, seed: int = 0) -> tuple[list[SampleProduct], str]:
    """`n` products with brands, prices and collections, and which generator made them."""
    wild = _benchmark_generator()
    if wild is not None:
        try:
            items = [
                SampleProduct({"_id": item.id, **item.metadata}, item.image, getattr(item, "cutout", None))
                for item in wild.generate_catalog(n, seed)
            ]
            return items, "benchmarks/wild.py"
        except Exception:  # noqa: S110 - a changed benchmark API falls back to the built-in generator
            pass
    return _builtin_catalog(n, seed), "built-in"


def _cut_out(image: Image.Image) -> Image.Image:
    """RGBA: the catalog photo with its near-white background made transparent."""
    rgb = image.convert("RGB")
    mask = rgb.convert("L").point(lambda v: 0 if v > 244 else 255).filter(ImageFilter.MaxFilter(3))
    out = rgb.convert("RGBA")
    out.putalpha(mask)
    return out.crop(mask.getbbox() or (0, 0, *rgb.size))


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
    item = (product.cutout or _cut_out(product.image)).convert("RGBA")
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


async def _chosen_model(svc: Any, raw: str) -> tuple[dict[str, Any] | str, str]:
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
    svc: Any, offline: bool, model: str | None = None
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


async def _create_index(svc: Any, name: str, model: dict[str, Any] | str | None) -> Any:
    # The same path as POST /api/v1/indexes/{name}, minus the HTTP admin check: the demo runs
    # on the operator's machine, which may not know the generated admin key any more.
    from app.domain import index_admin

    body = {"model": model, "reverseImageSearch": {"enabled": True}}
    return await index_admin.create_index(svc.pool, svc.vision, name, body)


async def prepare(svc: Any, options: DemoOptions, data_dir: Path, say: Callable[[str], None]) -> DemoInfo:
    """Create (or reuse) the demo index, load the sample catalog, write the shopper's photo."""
    from app.domain import index_settings
    from app.storage import indexes

    index_settings.validate_index_name(options.index)
    record = await indexes.get_index(svc.pool, options.index)
    if record is not None and options.reset:
        async with svc.pool.acquire() as conn, conn.transaction():
            await indexes.delete_index(conn, record)
        record = None
    if record is not None and not record.reverse_search_enabled:
        raise SystemExit(
            f"index {options.index!r} exists without reverse image search; "
            "run `lookalike demo --reset` to recreate it or `--index NAME` to use another name"
        )
    say(f"generating {options.products} sample products …")
    catalog, generator = await asyncio.to_thread(sample_catalog, options.products, options.seed)
    if record is None:
        model, model_note = await _choose_model(svc, options.offline, options.model)
        record = await _create_index(svc, options.index, model)
    else:
        model_note = f"{record.model.get('name')} (existing index)"
    stats = await indexes.index_stats(svc.pool, record)
    if stats["products"] < len(catalog):
        say(f"loading {len(catalog)} products into index {options.index!r} ({generator} catalog) …")
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
