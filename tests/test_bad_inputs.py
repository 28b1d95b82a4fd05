"""A corpus of bad inputs against every endpoint: each is a clear 4xx, never a 500 or a hang.

Malformed and deeply nested JSON, wrong types, oversized bodies, huge limits, broken data
URLs, non-images and broken images, decompression bombs, animated images, SVG, extreme
sizes, every filter error of FILTER_DSL.md, unicode and NUL in ids, fields and paths.
Batch endpoints answer per item; whatever was stored before stays stored (checked by a test
that sends the whole battery to its own index).
"""

from __future__ import annotations

import base64
import io
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from PIL import Image

from tests.conftest import ADMIN, api_settings, running_app
from tests.helpers import TEST_MODEL, data_url, product, product_image
from tests.imageserver import ImageServer

# -- shared checks (imported by the other reliability test modules) ------------------


def assert_error(response: httpx.Response, status: int, code: str | None = None, fragment: str = "") -> None:
    """`status` with the SPEC error body {"error": str, "code": str}, and no stack trace."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error", "code"}, body
    assert isinstance(body["error"], str) and isinstance(body["code"], str) and body["error"]
    assert "Traceback" not in body["error"]
    if code is not None:
        assert body["code"] == code, body
    assert fragment in body["error"], body


def assert_not_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "code"}, body


async def assert_catalog_consistent(pool: asyncpg.Pool) -> int:
    """Every product row has its vector row and every vector row its product (all indexes).

    Returns the number of products checked.
    """
    total = 0
    async with pool.acquire() as conn:
        for index_pk in [r["pk"] for r in await conn.fetch("SELECT pk FROM indexes")]:
            table = f"vectors_{int(index_pk)}"
            orphans = await conn.fetchval(
                f"SELECT count(*) FROM products p WHERE p.index_pk = $1 "
                f"AND NOT EXISTS (SELECT 1 FROM {table} v WHERE v.product_pk = p.pk)",
                index_pk,
            )
            stray = await conn.fetchval(
                f"SELECT count(*) FROM {table} v WHERE NOT EXISTS "
                f"(SELECT 1 FROM products p WHERE p.pk = v.product_pk AND p.index_pk = $1)",
                index_pk,
            )
            assert (orphans, stray) == (0, 0), f"index {index_pk}: {orphans} products without vectors, {stray} strays"
            total += await conn.fetchval("SELECT count(*) FROM products WHERE index_pk = $1", index_pk)
    return total


# -- fixtures --------------------------------------------------------------------------


@dataclass
class Corpus:
    name: str
    index_id: str
    baseline: dict[str, dict[str, Any]]  # product id -> what get-documents returned after ingest

    @property
    def base(self) -> str:
        return f"/api/v1/indexes/{self.name}"

    @property
    def read(self) -> dict[str, str]:
        return {"x-marqo-index-id": self.index_id}


async def make_corpus(api: httpx.AsyncClient, images: ImageServer) -> Corpus:
    """An index with reverse image search on and a few products that must survive bad inputs."""
    name = f"bad-{secrets.token_hex(4)}"
    r = await api.post(
        f"/api/v1/indexes/{name}",
        json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    index_id = r.json()["indexId"]
    docs = [
        product("keep-1", images.add(f"/{name}/keep-1.jpg", product_image(101)), brand="Nike", collections=["a"]),
        product("keep-2", images.add(f"/{name}/keep-2.png", product_image(102, fmt="PNG"), "image/png")),
        product("ключ-✓-🚀", images.add(f"/{name}/k.jpg", product_image(103)), цвет="красный", note="‮rtl‬ ünï"),
    ]
    r = await api.post(f"/api/v1/indexes/{name}/documents", json={"documents": docs}, headers=ADMIN)
    assert r.json()["errors"] is False, r.text
    got = await api.post(
        f"/api/v1/indexes/{name}/get-documents", json={"documentIds": [d["_id"] for d in docs]}, headers=ADMIN
    )
    baseline = {d["_id"]: d for d in got.json()["results"]}
    assert all(d["_found"] for d in baseline.values())
    assert baseline["ключ-✓-🚀"]["цвет"] == "красный"  # unicode ids and field names round-trip
    return Corpus(name, index_id, baseline)


@pytest.fixture(scope="module")
async def corpus(api: httpx.AsyncClient, images: ImageServer) -> Corpus:
    return await make_corpus(api, images)


JSON_ENDPOINTS = [  # (method, path suffix, credentials)
    ("POST", "/documents", "admin"),
    ("PATCH", "/documents", "admin"),
    ("DELETE", "/documents", "admin"),
    ("POST", "/get-documents", "read"),
    ("POST", "/search", "read"),
    ("POST", "/reverse-image-search", "read"),
    ("PATCH", "/settings", "admin"),
]


def _headers(corpus: Corpus, kind: str) -> dict[str, str]:
    return {**(ADMIN if kind == "admin" else corpus.read), "content-type": "application/json"}


# -- malformed JSON ------------------------------------------------------------------

DEEP = 100_000
MALFORMED_BODIES = {
    "not json": b"{not json",
    "truncated": b'{"documents": [',
    "bare word": b"nope",
    "nested arrays 100k": b"[" * DEEP + b"]" * DEEP,
    "nested objects 100k": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "unclosed nesting 100k": b"[" * DEEP,
    "nested in a field": b'{"documents": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "invalid utf-8": b'{"q": "\xff\xfe"}',
    "utf-8 encoded surrogate": b'{"q": "\xed\xa0\x80"}',
    "lone surrogate escape": b'{"q": "\\ud800", "documentIds": ["\\udc00"], "ids": ["\\ud800"]}',
    "surrogate in a key": b'{"\\udfff": 1}',
    "5000-digit integer": b'{"limit": ' + b"9" * 5000 + b"}",
    "trailing garbage": b'{"q": "*"} {"q": "*"}',
    "utf-16": '{"q": "*"}'.encode("utf-16"),
    "nul byte": b'{"q": "*"}\x00',
}


@pytest.mark.parametrize("label", list(MALFORMED_BODIES))
@pytest.mark.parametrize(("method", "suffix", "kind"), JSON_ENDPOINTS)
async def test_malformed_json_is_400(
    api: httpx.AsyncClient, corpus: Corpus, method: str, suffix: str, kind: str, label: str
) -> None:
    r = await api.request(method, corpus.base + suffix, content=MALFORMED_BODIES[label], headers=_headers(corpus, kind))
    assert_error(r, 400, "invalid_json")


async def test_paired_surrogates_and_bom_are_fine(api: httpx.AsyncClient, corpus: Corpus) -> None:
    body = b'\xef\xbb\xbf{"documentIds": ["\\ud83d\\ude80", "keep-1"]}'  # BOM, then a valid pair (rocket)
    r = await api.post(corpus.base + "/get-documents", content=body, headers=_headers(corpus, "read"))
    assert r.status_code == 200, r.text
    assert [x["_found"] for x in r.json()["results"]] == [False, True]


async def test_create_index_with_malformed_json(api: httpx.AsyncClient) -> None:
    for label in ("not json", "nested arrays 100k", "lone surrogate escape", "5000-digit integer"):
        r = await api.post(f"/api/v1/indexes/x-{secrets.token_hex(3)}", content=MALFORMED_BODIES[label], headers=ADMIN)
        assert_error(r, 400, "invalid_json")


# -- wrong types everywhere -------------------------------------------------------------

WRONG = [None, True, 0, -1.5, "text", [], ["a", 1], {}, {"a": {"b": []}}]


def _type_cases() -> list[tuple[str, str, str, dict[str, Any]]]:
    cases: list[tuple[str, str, str, dict[str, Any]]] = []
    for value in WRONG:
        if not isinstance(value, list):
            cases.append(("POST", "/documents", "admin", {"documents": value}))
            cases.append(("PATCH", "/documents", "admin", {"documents": value}))
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            cases.append(("POST", "/get-documents", "read", {"documentIds": value}))
            cases.append(("DELETE", "/documents", "admin", {"ids": value}))
            if value is not None:  # null = "no filter" / "core fields"
                cases.append(("POST", "/search", "read", {"q": "*", "attributesToRetrieve": value}))
        if not isinstance(value, str) and value is not None:
            cases.append(("POST", "/search", "read", {"q": value}))
            cases.append(("POST", "/search", "read", {"q": "*", "filter": value}))
            if value != {}:  # {} changes nothing and is valid
                cases.append(("PATCH", "/settings", "admin", {"reverseImageSearch": value}))
        if not isinstance(value, str):
            cases.append(("POST", "/reverse-image-search", "read", {"q": value}))
        if not isinstance(value, int) or isinstance(value, bool):
            cases.append(("POST", "/search", "read", {"q": "*", "limit": value}))
            cases.append(("POST", "/search", "read", {"q": "*", "offset": value}))
        if not isinstance(value, bool):
            cases.append(("PATCH", "/settings", "admin", {"reverseImageSearch": {"enabled": value}}))
        if not isinstance(value, dict):
            for suffix, kind in (("/documents", "admin"), ("/get-documents", "read"), ("/settings", "admin")):
                cases.append(("POST" if suffix != "/settings" else "PATCH", suffix, kind, value))  # type: ignore[arg-type]
    return cases


@pytest.mark.parametrize(("method", "suffix", "kind", "body"), _type_cases())
async def test_wrong_types_are_400(
    api: httpx.AsyncClient, corpus: Corpus, method: str, suffix: str, kind: str, body: Any
) -> None:
    r = await api.request(method, corpus.base + suffix, json=body, headers=_headers(corpus, kind))
    assert_error(r, 400)


async def test_reverse_search_error_strings_are_exact(api: httpx.AsyncClient, corpus: Corpus) -> None:
    url = corpus.base + "/reverse-image-search"
    q = data_url(product_image(101))
    for body in ({}, {"q": 5}, {"q": "red shoes"}, {"q": "http://127.0.0.1/a.gif"}, {"q": "data:image/png;base64,@@"}):
        r = await api.post(url, json=body, headers=corpus.read)
        assert_error(r, 400, fragment="q must be an image URL or base64 data URI")
        assert r.json()["error"] == "q must be an image URL or base64 data URI"
    r = await api.post(url, json={"q": q, "filter": 5}, headers=corpus.read)
    assert r.json()["error"] == "filter must be a string"
    r = await api.post(url, json={"q": q, "attributesToRetrieve": "productTitle"}, headers=corpus.read)
    assert r.json()["error"] == "attributesToRetrieve must be an array of strings"
    for limit in ("5", 1.5, True, [1]):
        assert_error(await api.post(url, json={"q": q, "limit": limit}, headers=corpus.read), 400)


# -- documents: per-item failures ---------------------------------------------------------


BAD_DOCUMENTS: list[tuple[Any, str]] = [
    ("not an object", "JSON object"),
    ({"productTitle": "x", "price": 1, "variantImageUrl": "http://127.0.0.1/a.jpg"}, "_id is required"),
    (product("", "http://127.0.0.1/a.jpg"), "_id must be 1 to"),
    (product("x" * 513, "http://127.0.0.1/a.jpg"), "_id must be 1 to"),
    (product("nul\x00id", "http://127.0.0.1/a.jpg"), "NUL"),
    (product("nul-title", "http://127.0.0.1/a.jpg", productTitle="a\x00b"), "NUL"),
    (product("nul-array", "http://127.0.0.1/a.jpg", tags=["ok", "b\x00d"]), "NUL"),
    (product("nul-name", "http://127.0.0.1/a.jpg", **{"bad\x00name": "v"}), "NUL"),
    (product("empty-name", "http://127.0.0.1/a.jpg", **{"": "v"}), "must not be empty"),
    (product("reserved", "http://127.0.0.1/a.jpg", _secret="v"), "reserved"),
    (product("nested", "http://127.0.0.1/a.jpg", specs={"w": 1}), "nested object"),
    (product("null", "http://127.0.0.1/a.jpg", color=None), "null"),
    (product("mixed-array", "http://127.0.0.1/a.jpg", tags=["a", 2]), "array of strings"),
    (product("price-str", "http://127.0.0.1/a.jpg", price="12"), "price must be a number"),
    (product("price-bool", "http://127.0.0.1/a.jpg", price=True), "price must be a number"),
    (product("title-num", "http://127.0.0.1/a.jpg", productTitle=5), "productTitle must be a string"),
    (product("title-blank", "http://127.0.0.1/a.jpg", productTitle="   "), "must not be empty"),
    (product("both-collections", "http://127.0.0.1/a.jpg", collections=["a"], productCollections=["b"]), "either"),
    (product("no-url", 5), "variantImageUrl must be a string"),
    (product("ftp", "ftp://example.com/a.jpg"), "variantImageUrl must be an http(s) URL"),
    (product("file", "file:///etc/passwd"), "variantImageUrl must be an http(s) URL"),
    (product("text-data", "data:text/plain;base64,aGVsbG8="), "variantImageUrl must be an http(s) URL"),
    (product("too-many-fields", "http://127.0.0.1/a.jpg", **{f"f{i}": i for i in range(300)}), "at most 256"),
    (product("huge-array", "http://127.0.0.1/a.jpg", tags=["t"] * 1025), "more than 1024"),
    (product("huge-string", "http://127.0.0.1/a.jpg", note="x" * 100_001), "longer than"),
]


async def test_bad_documents_fail_per_item(api: httpx.AsyncClient, corpus: Corpus, images: ImageServer) -> None:
    good = product("good-one", images.add(f"/{corpus.name}/good.jpg", product_image(7)))
    docs = [doc for doc, _ in BAD_DOCUMENTS] + [good]
    r = await api.post(corpus.base + "/documents", json={"documents": docs}, headers=ADMIN)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == len(docs)
    for (doc, fragment), item in zip(BAD_DOCUMENTS, items, strict=False):
        assert item["status"] == 400, (doc if not isinstance(doc, dict) else doc.get("_id"), item)
        assert fragment in item["message"], item
    assert items[-1] == {"_id": "good-one", "status": 200}
    # The same bad items as partial updates of a stored product: per item, nothing half-applied.
    patches = [
        {"_id": "keep-1", "price": "12"},
        {"_id": "keep-1", "specs": {"a": 1}},
        {"_id": "keep-1", "tags": ["x\x00"]},
        {"_id": "keep-1", "variantImageUrl": "ftp://x/a.jpg"},
        {"_id": "keep-1\x00"},
        {"_id": 7},
        {"_id": None},
        "not an object",
    ]
    r = await api.patch(corpus.base + "/documents", json={"documents": patches}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert [i["status"] for i in r.json()["items"]] == [400] * len(patches), r.text


async def test_batch_size_and_empty_batch(api: httpx.AsyncClient, corpus: Corpus) -> None:
    many = [product(f"m{i}", "http://127.0.0.1/a.jpg") for i in range(129)]
    for method in ("POST", "PATCH"):
        r = await api.request(method, corpus.base + "/documents", json={"documents": many}, headers=ADMIN)
        assert_error(r, 400, "too_many_documents")
        r = await api.request(method, corpus.base + "/documents", json={"documents": []}, headers=ADMIN)
        assert_error(r, 400, "invalid_documents")
    r = await api.post(corpus.base + "/get-documents", json={"documentIds": ["a"] * 101}, headers=corpus.read)
    assert_error(r, 400, fragment="at most 100")
    r = await api.request("DELETE", corpus.base + "/documents", json={"ids": ["zz"] * 10_001}, headers=ADMIN)
    assert_error(r, 400)


async def test_unicode_and_nul_in_ids(api: httpx.AsyncClient, corpus: Corpus) -> None:
    ids = ["keep-1", "ключ-✓-🚀", "nul\x00id", "\x00", "", " keep-1", "KEEP-1", "‮", "x" * 5000]
    r = await api.post(corpus.base + "/get-documents", json={"documentIds": ids}, headers=corpus.read)
    assert r.status_code == 200, r.text
    assert [x["_found"] for x in r.json()["results"]] == [True, True] + [False] * 7
    r = await api.request(
        "DELETE", corpus.base + "/documents", json={"ids": ids[2:]}, headers=ADMIN
    )  # ids that match nothing: 404 per item, nothing deleted
    assert r.status_code == 200 and r.json()["details"]["deletedDocuments"] == 0
    assert {i["status"] for i in r.json()["items"]} == {404}
    for q in ("nul\x00query",):
        assert_error(await api.post(corpus.base + "/search", json={"q": q}, headers=corpus.read), 400)
    for q in ("ключ", "🚀 ✓", "‮", "\x01\x02", "'; DROP TABLE products; --"):
        r = await api.post(corpus.base + "/search", json={"q": q}, headers=corpus.read)
        assert r.status_code == 200, (q, r.text)
    r = await api.post(
        corpus.base + "/search", json={"q": "*", "attributesToRetrieve": ["\x00", "цвет", ""]}, headers=corpus.read
    )
    assert r.status_code == 200


async def test_unusable_index_names_in_the_path(api: httpx.AsyncClient, corpus: Corpus) -> None:
    for raw in ("a%00b", "%00", "%C3%A9", "UPPER", "a" * 200, "%2e%2e", "x%20y", "%F0%9F%9A%80"):
        base = f"/api/v1/indexes/{raw}"
        assert_error(await api.post(base + "/search", json={}, headers=corpus.read), 401, "unauthorized")
        assert_error(await api.post(base + "/search", json={}, headers=ADMIN), 404)
        assert_error(await api.get(base + "/settings", headers=ADMIN), 404)
        assert_error(await api.post(base + "/documents", json={"documents": []}, headers=ADMIN), 404)
        assert_error(await api.delete(base, headers=ADMIN), 404)
        r = await api.post(base, json={"model": TEST_MODEL}, headers=ADMIN)
        assert_error(r, 400, "invalid_index_name")
    latin1 = {"x-marqo-index-id": b"\xe9\x7f" + corpus.index_id.encode()}  # not ASCII: decoded as latin-1
    r = await api.post(corpus.base + "/search", json={}, headers=latin1)
    assert_error(r, 401)


# -- limit / offset --------------------------------------------------------------------

LIMITS: list[tuple[dict[str, Any], int]] = [
    ({"limit": 10**30}, 400),
    ({"limit": -(10**30)}, 400),
    ({"limit": 1e308}, 400),
    ({"limit": 0}, 400),
    ({"limit": 1001}, 400),
    ({"offset": -1}, 400),
    ({"offset": 10**30}, 400),
    ({"limit": 1000, "offset": 9001}, 400),
    ({"limit": 1000, "offset": 9000}, 200),
    ({"limit": 2.0}, 200),
]


@pytest.mark.parametrize(("extra", "status"), LIMITS)
async def test_huge_limit_and_offset(api: httpx.AsyncClient, corpus: Corpus, extra: dict, status: int) -> None:
    for q in ("*", "shoes"):
        r = await api.post(corpus.base + "/search", json={"q": q, **extra}, headers=corpus.read)
        if status == 200:
            assert r.status_code == 200, r.text
        else:
            assert_error(r, status)


async def test_reverse_limit_is_clamped(api: httpx.AsyncClient, corpus: Corpus) -> None:
    q = data_url(product_image(101))
    for limit, effective in ((10**30, 10), (-(10**30), 1), (0, 1), (50, 10), (3.0, 3)):
        r = await api.post(corpus.base + "/reverse-image-search", json={"q": q, "limit": limit}, headers=corpus.read)
        assert r.status_code == 200, r.text
        assert r.json()["limit"] == effective


async def test_text_query_length_cap(api: httpx.AsyncClient, corpus: Corpus) -> None:
    # Regression: a megabyte of words was a 500 (tsquery too big) or a 30 s statement timeout.
    for q in ("word " * 300_000, "x" * 3_000_000):
        r = await api.post(corpus.base + "/search", json={"q": q}, headers=corpus.read)
        assert_error(r, 400, "invalid_query", "at most 4096 characters")
    r = await api.post(corpus.base + "/search", json={"q": "word " * 800}, headers=corpus.read)
    assert r.status_code == 200


# -- oversized bodies --------------------------------------------------------------------


async def test_oversized_bodies_are_413(database_url: str, tmp_path: Any) -> None:
    async with running_app(api_settings(database_url, tmp_path, max_body_bytes=20_000)) as client:
        name = f"small-{secrets.token_hex(3)}"
        create = {"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}
        r = await client.post(f"/api/v1/indexes/{name}", json=create, headers=ADMIN)
        index_id = r.json()["indexId"]
        big = b'{"q": "' + b"a" * 30_000 + b'"}'
        for method, suffix, kind in JSON_ENDPOINTS:
            headers = {**(ADMIN if kind == "admin" else {"x-marqo-index-id": index_id})}
            r = await client.request(method, f"/api/v1/indexes/{name}{suffix}", content=big, headers=headers)
            assert_error(r, 413, "payload_too_large")

            async def chunks() -> Any:  # no Content-Length: the limit is counted while streaming
                for _ in range(30):
                    yield b" " * 1000

            r = await client.request(method, f"/api/v1/indexes/{name}{suffix}", content=chunks(), headers=headers)
            assert_error(r, 413, "payload_too_large")
        r = await client.post(f"/api/v1/indexes/{name}-2", content=big, headers=ADMIN)
        assert_error(r, 413, "payload_too_large")


async def test_default_body_limit_is_32_mib(api: httpx.AsyncClient, corpus: Corpus) -> None:
    body = b'{"documents": [{"_id": "big", "variantImageUrl": "data:image/png;base64,' + b"A" * (33 << 20) + b'"}]}'
    r = await api.post(corpus.base + "/documents", content=body, headers=ADMIN)
    assert_error(r, 413, "payload_too_large", str(32 * 1024 * 1024))


# -- images ---------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _textured(size: int = 256) -> Image.Image:
    return Image.open(io.BytesIO(product_image(55, size=size)))


def _animated(fmt: str) -> tuple[bytes, bytes, bytes]:
    """(animation, first frame as PNG, second frame as PNG): two flat, very different frames."""
    first, second = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    anim = _encode(
        first,
        fmt,
        save_all=True,
        append_images=[second],
        duration=100,
        loop=0,
        **({"lossless": True} if fmt == "WEBP" else {}),
    )
    return anim, _encode(first, "PNG"), _encode(second, "PNG")


def _bad_images() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected fragment of the 400 message)."""
    img = _textured(128)  # small keeps the corpus fast
    jpeg, png, webp, avif, gif, tiff = (_encode(img, f) for f in ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "TIFF"))
    bomb_png = _encode(Image.new("1", (20000, 20000)), "PNG")  # a few KB, 400 MP
    bomb_gif = _encode(Image.new("L", (20000, 2100)), "GIF")  # 42 MP, over the 40 MP default
    return {
        "text": (b"hello, this is not an image", "not an image"),
        "html": (b"<!doctype html><html><body>hi</body></html>", "not an image (got an HTML page)"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', "SVG"),
        "svg-xml": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        "bmp": (_encode(img, "BMP"), "BMP"),
        "zeros": (b"\x00" * 4096, "not an image"),
        "jpeg-header-only": (jpeg[:20], "not an image"),
        "jpeg-truncated": (jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        "png-truncated": (png[: len(png) // 2], "truncated or corrupt"),
        "webp-truncated": (webp[: len(webp) // 2], "truncated or corrupt"),
        "avif-truncated": (avif[: len(avif) // 2], ""),
        "gif-truncated": (gif[: len(gif) // 3], "truncated or corrupt"),
        "tiff-truncated": (tiff[: len(tiff) // 2], ""),
        "png-bad-crc": (png[:40] + bytes(b ^ 0xFF for b in png[40:80]) + png[80:], ""),
        "png-bomb-20000x20000": (bomb_png, "pixels"),
        "gif-bomb-20000x2100": (bomb_gif, "pixels"),
    }


@pytest.fixture(scope="module")
def bad_images() -> dict[str, tuple[bytes, str]]:
    return _bad_images()


async def test_broken_images_fail_per_item_on_ingest(
    api: httpx.AsyncClient, corpus: Corpus, images: ImageServer, bad_images: dict[str, tuple[bytes, str]]
) -> None:
    docs = []
    for label, (data, _) in bad_images.items():
        docs.append(product(f"img-{label}-data", data_url(data, "image/png")))
        docs.append(product(f"img-{label}-url", images.add(f"/{corpus.name}/bad/{label}.jpg", data, "image/jpeg")))
    r = await api.post(corpus.base + "/documents", json={"documents": docs}, headers=ADMIN)
    assert r.status_code == 200, r.text
    for item in r.json()["items"]:
        label = item["_id"].removeprefix("img-").rsplit("-", 1)[0]
        assert item["status"] == 400, item
        assert item["message"].startswith("variantImageUrl: "), item
        assert bad_images[label][1] in item["message"], (label, item)


async def test_broken_images_as_queries(
    api: httpx.AsyncClient, corpus: Corpus, images: ImageServer, bad_images: dict[str, tuple[bytes, str]]
) -> None:
    for label, (data, fragment) in bad_images.items():
        url = images.add(f"/{corpus.name}/q/{label}.png", data, "image/png")
        for endpoint in ("/search", "/reverse-image-search"):
            for q in (data_url(data, "image/png"), url):
                r = await api.post(corpus.base + endpoint, json={"q": q}, headers=corpus.read)
                assert_error(r, 400, fragment=fragment)  # same message as on ingest
                assert r.json()["error"].startswith("q: "), r.json()


MALFORMED_DATA_URLS = [
    "data:image/png;base64,",
    "data:image/png;base64,!!!!",
    "data:image/png;base64,aGVsbG8",  # bad padding
    "data:image/png;base64,aGVs bG8=",
    "data:image/png," + base64.b64encode(b"x").decode(),  # not base64-flagged
    "data:text/plain;base64,aGVsbG8=",
    "data:;base64,aGVsbG8=",
    "data:image/png;base64" + "A" * 100,  # no comma
    "data:image/png;base64,%%%%",
    "data:image/png;base64," + "A" * 1_000_001,  # valid base64 of zeros: not an image
]


@pytest.mark.parametrize("url", MALFORMED_DATA_URLS, ids=range(len(MALFORMED_DATA_URLS)))
async def test_malformed_data_urls(api: httpx.AsyncClient, corpus: Corpus, url: str) -> None:
    r = await api.post(corpus.base + "/documents", json={"documents": [product("du", url)]}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["items"][0]["status"] == 400, r.text
    for endpoint in ("/search", "/reverse-image-search"):
        r = await api.post(corpus.base + endpoint, json={"q": url}, headers=corpus.read)
        # /search treats a string that is not an image reference as text (SPEC), never a 5xx.
        assert_not_server_error(r)
        if endpoint == "/reverse-image-search":
            assert_error(r, 400)


async def test_extreme_but_valid_images(api: httpx.AsyncClient, corpus: Corpus, images: ImageServer) -> None:
    tiny = _encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG")
    strip = _encode(Image.new("RGB", (4000, 1), (9, 9, 9)), "PNG")
    avif = _encode(_textured(), "AVIF")
    cmyk = _encode(_textured().convert("CMYK"), "JPEG")
    grey16 = _encode(Image.new("I;16", (32, 32), 40000), "PNG")
    files = {"tiny-1x1": tiny, "strip-4000x1": strip, "avif": avif, "cmyk": cmyk, "grey16": grey16}
    docs = [product(k, images.add(f"/{corpus.name}/ok/{k}.img", v, "image/*")) for k, v in files.items()]
    r = await api.post(corpus.base + "/documents", json={"documents": docs}, headers=ADMIN)
    assert [i["status"] for i in r.json()["items"]] == [200] * len(docs), r.text
    # each as a shopper's photo too: one product, several (regions) and with the matched pairs
    plain = _encode(Image.new("RGB", (640, 480), (200, 30, 30)), "JPEG")
    for name, data in {**files, "plain-colour": plain}.items():
        q = data_url(data, "image/png")
        for extra in ({}, {"regions": True, "explain": True}):
            r = await api.post(corpus.base + "/reverse-image-search", json={"q": q, **extra}, headers=corpus.read)
            assert r.status_code == 200, (name, extra, r.text)
            hits = r.json()["hits"]
            assert hits and all(isinstance(hit["_score"], float) for hit in hits), r.text


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
async def test_animated_images_use_the_first_frame(
    api: httpx.AsyncClient, corpus: Corpus, images: ImageServer, fmt: str
) -> None:
    anim, first, second = _animated(fmt)
    product_id = f"anim-{fmt.lower()}"
    r = await api.post(
        corpus.base + "/documents",
        json={"documents": [product(product_id, images.add(f"/{corpus.name}/{product_id}", anim, "image/*"))]},
        headers=ADMIN,
    )
    assert r.json()["items"] == [{"_id": product_id, "status": 200}], r.text
    scores = {}
    for label, frame in (("first", first), ("second", second)):
        r = await api.post(
            corpus.base + "/search",
            json={"q": data_url(frame, "image/png"), "filter": f"_id:{product_id}"},
            headers=corpus.read,
        )
        assert r.status_code == 200, r.text
        scores[label] = r.json()["hits"][0]["_score"]
    assert scores["first"] > 0.999, scores
    assert scores["second"] < scores["first"], scores


# -- filters ------------------------------------------------------------------------------

FILTER_ERRORS = [
    "brand:Nike AND",
    "brand:Nike brand:Sony",
    "brand:Nike and price:1",
    "(brand:Nike",
    "brand:Nike)",
    "NOT NOT brand:Nike",
    "price:[* TO *]",
    "price:{1 TO 2}",
    "price:[a TO 2]",
    "price:[1 TO 2",
    "color:()",
    "brand IN Sony",
    "brand IN ()",
    "brand IN (Sony, Acme Co)",  # (an empty item, `(Sony,)`, is the empty string: Marqo parity)
    "AND brand:x",
    "OR",
    "NOT",
    "()",
    "brand",
    ":x",
    "brand:Nike && price:1",
    "brand:Nike || price:1",
    "(brand:Nike)AND(price:1)",
    "brand:Nike AND AND price:1",
    "a:\\",
]
FILTER_LIMITS = [
    "a:" + "x" * 10_001,
    "(" * 33 + "a:1" + ")" * 33,
    "a IN (" + ",".join(str(i) for i in range(10_001)) + ")",
    "(" * 5000,
]


@pytest.mark.parametrize("filter_text", FILTER_ERRORS + FILTER_LIMITS, ids=range(len(FILTER_ERRORS + FILTER_LIMITS)))
async def test_filter_errors(api: httpx.AsyncClient, corpus: Corpus, filter_text: str) -> None:
    q_image = data_url(product_image(101))
    queries = (("/search", "*"), ("/search", "shoes"), ("/search", q_image), ("/reverse-image-search", q_image))
    for endpoint, q in queries:
        r = await api.post(corpus.base + endpoint, json={"q": q, "filter": filter_text}, headers=corpus.read)
        assert_error(r, 400, "invalid_filter")
        if filter_text in FILTER_ERRORS:
            message = r.json()["error"]
            assert message.startswith("Error parsing filter: ") and " at position " in message, message


# -- nothing stored was lost ------------------------------------------------------------


async def test_stored_products_survive_every_bad_input(
    api: httpx.AsyncClient, images: ImageServer, pool: asyncpg.Pool
) -> None:
    """On its own index, independent of the other tests' order: every malformed body on every
    endpoint, every wrong type, every bad document and patch, every filter error; then the
    products stored first are intact and every product has its vector."""
    corpus = await make_corpus(api, images)
    for method, suffix, kind in JSON_ENDPOINTS:
        for body in MALFORMED_BODIES.values():
            r = await api.request(method, corpus.base + suffix, content=body, headers=_headers(corpus, kind))
            assert_error(r, 400)
    for method, suffix, kind, body in _type_cases():
        assert_error(await api.request(method, corpus.base + suffix, json=body, headers=_headers(corpus, kind)), 400)
    r = await api.post(corpus.base + "/documents", json={"documents": [d for d, _ in BAD_DOCUMENTS]}, headers=ADMIN)
    assert r.status_code == 200 and {i["status"] for i in r.json()["items"]} == {400}, r.text
    patches = [{"_id": "keep-1", "price": "12"}, {"_id": "keep-1", "specs": {"a": 1}}, {"_id": "keep-1\x00"}]
    r = await api.patch(corpus.base + "/documents", json={"documents": patches}, headers=ADMIN)
    assert r.status_code == 200 and {i["status"] for i in r.json()["items"]} == {400}, r.text
    for filter_text in FILTER_ERRORS:
        r = await api.post(corpus.base + "/search", json={"q": "*", "filter": filter_text}, headers=corpus.read)
        assert_error(r, 400, "invalid_filter")

    r = await api.post(corpus.base + "/get-documents", json={"documentIds": list(corpus.baseline)}, headers=corpus.read)
    assert {d["_id"]: d for d in r.json()["results"]} == corpus.baseline
    assert await assert_catalog_consistent(pool) > 0
    health = await api.get("/health")
    assert health.status_code == 200
