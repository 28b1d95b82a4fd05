"""SSRF through the API: every way of naming a private address is refused with a clear 400.

tests/test_fetch.py covers the fetcher's rules one by one; here the same attacks go through
add-documents (a 400 per item, the other items land), PATCH documents (re-embedding),
/search and /reverse-image-search (a request-level 400), on an app WITHOUT an allow-list,
and a loopback image server proves that nothing was requested. Redirect tests need a
first hop that may be fetched, so they run on an app whose allow-list admits exactly
127.0.0.1/32 and nothing else.
"""

from __future__ import annotations

import base64
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from app.config import FetchAllowList
from tests.conftest import ADMIN, api_settings, running_app
from tests.helpers import TEST_MODEL, product, product_image
from tests.imageserver import ImageServer
from tests.test_bad_inputs import assert_error

JPEG = product_image(301)
# Data URLs kept small: long string values currently overflow a GIN index row (see README, Reliability).
SMALL_DATA_URL = "data:image/jpeg;base64," + base64.b64encode(product_image(302, size=24)).decode()


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    """This module's own loopback image server, so its request log is ours alone."""
    with ImageServer() as s:
        s.add("/cat.jpg", JPEG)
        yield s


@dataclass
class App:
    client: httpx.AsyncClient
    name: str
    index_id: str

    @property
    def base(self) -> str:
        return f"/api/v1/indexes/{self.name}"

    @property
    def read(self) -> dict[str, str]:
        return {"x-marqo-index-id": self.index_id}


async def _app_with(
    database_url: str, tmp: pytest.TempPathFactory, allow: FetchAllowList, **overrides: object
) -> AsyncIterator[App]:
    settings = api_settings(database_url, tmp.mktemp("ssrf"), fetch_allowlist=allow, **overrides)
    # No start-up warm-up: it would load (and export to ONNX) the models of every index other
    # test modules left in the shared database, and an export's tracing holds the GIL for
    # seconds, which these tests' fetch deadlines would measure instead of the fetch.
    async with running_app(settings, start_background_work=False) as client:
        name = f"ssrf-{secrets.token_hex(4)}"
        r = await client.post(
            f"/api/v1/indexes/{name}",
            json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}},
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        yield App(client, name, r.json()["indexId"])


@pytest.fixture(scope="module")
async def closed(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    """The production default: no allow-list at all."""
    async for app in _app_with(database_url, tmp_path_factory, FetchAllowList()):
        yield app


@pytest.fixture(scope="module")
async def only_127(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    """An allow-list admitting the address 127.0.0.1 only (not the name localhost, not 127.0.0.2)."""
    async for app in _app_with(
        database_url, tmp_path_factory, FetchAllowList.parse("127.0.0.1/32"), fetch_total_timeout_s=1.0
    ):
        yield app


def _loopback_hostname() -> str | None:
    """This machine's own host name when it resolves to loopback only (often true in containers)."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        return None
    return name if addresses and all(a.startswith("127.") or a == "::1" for a in addresses) else None


# Each spelling reaches the image server (127.0.0.1:<port>) if it were fetched.
LOOPBACK_SPELLINGS = [
    ("http://127.0.0.1:{port}/cat.jpg", "127.0.0.1 is a loopback address"),
    ("http://localhost:{port}/cat.jpg", "localhost resolves to 127.0.0.1, a loopback address"),
    ("http://LocalHost:{port}/cat.jpg", "resolves to 127.0.0.1, a loopback address"),
    ("http://2130706433:{port}/cat.jpg", "2130706433 resolves to 127.0.0.1, a loopback address"),  # decimal
    ("http://0x7f000001:{port}/cat.jpg", "resolves to 127.0.0.1, a loopback address"),  # hex
    ("http://0x7f.1:{port}/cat.jpg", "resolves to 127.0.0.1, a loopback address"),
    ("http://017700000001:{port}/cat.jpg", "resolves to 127.0.0.1, a loopback address"),  # octal
    ("http://127.1:{port}/cat.jpg", "resolves to 127.0.0.1, a loopback address"),
    ("http://0177.0.0.1:{port}/cat.jpg", "not a valid URL"),  # httpx refuses octal dotted quads
    ("http://[::ffff:127.0.0.1]:{port}/cat.jpg", "is a loopback address"),
    ("http://[::ffff:7f00:1]:{port}/cat.jpg", "is a loopback address"),
    ("http://0.0.0.0:{port}/cat.jpg", "is an unspecified address"),  # Linux connects 0.0.0.0 to loopback
    ("http://127.0.0.1:{port}/cat.jpg#x.jpg", "is a loopback address"),
    ("http://user:pw@127.0.0.1:{port}/cat.jpg", "is a loopback address"),
]
OTHER_PRIVATE = [
    ("http://[::1]:{port}/cat.jpg", "::1 is a loopback address"),
    ("http://10.0.0.5/x.jpg", "10.0.0.5 is a private address"),
    ("http://172.16.0.1/x.jpg", "is a private address"),
    ("http://192.168.1.1/x.jpg", "is a private address"),
    ("http://169.254.169.254/latest/meta-data/iam.jpg", "169.254.169.254 is a link-local address"),
    ("http://[fe80::1]/x.jpg", "is a link-local address"),
    ("http://[fc00::1]/x.jpg", "is a private address"),
    ("http://[::ffff:169.254.169.254]/x.jpg", "is a link-local address"),
    ("http://[64:ff9b::a00:1]/x.jpg", "is a private address"),
    ("http://[::7f00:1]/x.jpg", "is a reserved address"),
    ("http://100.64.0.1/x.jpg", "is a non-public address"),
    ("http://224.0.0.1/x.jpg", "is a multicast address"),
    ("http://255.255.255.255/x.jpg", "address"),
]
ALL_BLOCKED = LOOPBACK_SPELLINGS + OTHER_PRIVATE


async def test_blocked_addresses_in_add_documents(closed: App, server: ImageServer) -> None:
    before = len(server.requests)
    urls = [template.format(port=server.port) for template, _ in ALL_BLOCKED]
    hostname = _loopback_hostname()
    if hostname:
        urls.append(f"http://{hostname}:{server.port}/cat.jpg")
    docs = [product(f"b{i}", url) for i, url in enumerate(urls)]
    docs.append(product("public-data-url", SMALL_DATA_URL))
    r = await closed.client.post(closed.base + "/documents", json={"documents": docs}, headers=ADMIN)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    for (template, fragment), item in zip(ALL_BLOCKED, items, strict=False):
        assert item["status"] == 400, (template, item)
        assert item["message"].startswith("variantImageUrl: "), item
        assert fragment in item["message"], (template, item)
        if "valid URL" not in fragment:
            assert "not allow-listed" in item["message"], item
    if hostname:
        assert items[len(ALL_BLOCKED)]["status"] == 400 and "loopback" in items[len(ALL_BLOCKED)]["message"]
    assert items[-1] == {"_id": "public-data-url", "status": 200}  # the rest of the batch lands
    assert server.requests[before:] == []


@pytest.mark.parametrize(("template", "fragment"), ALL_BLOCKED, ids=[t for t, _ in ALL_BLOCKED])
async def test_blocked_addresses_as_queries(closed: App, server: ImageServer, template: str, fragment: str) -> None:
    before = len(server.requests)
    url = template.format(port=server.port)
    for endpoint in ("/search", "/reverse-image-search"):
        r = await closed.client.post(closed.base + endpoint, json={"q": url}, headers=closed.read)
        code = "invalid_image_url" if "valid URL" in fragment else "image_host_not_allowed"
        assert_error(r, 400, code, fragment)
        assert r.json()["error"].startswith("q: ")
    assert server.requests[before:] == []


async def test_blocked_address_in_a_partial_update(closed: App, server: ImageServer) -> None:
    data = SMALL_DATA_URL
    r = await closed.client.post(closed.base + "/documents", json={"documents": [product("upd", data)]}, headers=ADMIN)
    assert r.json()["items"] == [{"_id": "upd", "status": 200}]
    before = len(server.requests)
    r = await closed.client.patch(
        closed.base + "/documents",
        json={"documents": [{"_id": "upd", "variantImageUrl": server.url("/cat.jpg")}]},
        headers=ADMIN,
    )
    item = r.json()["items"][0]
    assert item["status"] == 400 and "loopback address and is not allow-listed" in item["message"], item
    got = await closed.client.post(closed.base + "/get-documents", json={"documentIds": ["upd"]}, headers=ADMIN)
    assert got.json()["results"][0]["variantImageUrl"] == data  # the stored product is unchanged
    assert server.requests[before:] == []


NON_HTTP = [
    "file:///etc/passwd",
    "file://localhost/etc/passwd.jpg",
    "ftp://127.0.0.1/x.jpg",
    "gopher://127.0.0.1:70/_x.jpg",
    "dict://127.0.0.1:11211/x.jpg",
    "javascript:alert(1)//.jpg",
    "jar:http://127.0.0.1/x.jar!/a.jpg",
    "//127.0.0.1/x.jpg",
    "127.0.0.1/x.jpg",
]


@pytest.mark.parametrize("url", NON_HTTP)
async def test_non_http_schemes(closed: App, server: ImageServer, url: str) -> None:
    before = len(server.requests)
    r = await closed.client.post(closed.base + "/documents", json={"documents": [product("s", url)]}, headers=ADMIN)
    item = r.json()["items"][0]
    assert item["status"] == 400 and "must be an http(s) URL or a data:image" in item["message"], item
    r = await closed.client.post(closed.base + "/reverse-image-search", json={"q": url}, headers=closed.read)
    assert_error(r, 400, "invalid_query", "q must be an image URL or base64 data URI")
    # /search reads a string that is not an image URL as text (SPEC): nothing is fetched.
    r = await closed.client.post(closed.base + "/search", json={"q": url}, headers=closed.read)
    assert r.status_code == 200 and r.json()["hits"] == []
    assert server.requests[before:] == []


# -- allow-list semantics and redirects ----------------------------------------------------


async def test_allow_list_is_exact(only_127: App, server: ImageServer) -> None:
    """127.0.0.1/32 admits that address (so the loopback server works) and nothing around it."""
    ok = product("allowed", server.url("/cat.jpg"))
    other_loopback = product("127-0-0-2", f"http://127.0.0.2:{server.port}/cat.jpg")
    v6 = product("v6-loopback", f"http://[::1]:{server.port}/cat.jpg")
    private = product("private", "http://10.0.0.5/x.jpg")
    r = await only_127.client.post(
        only_127.base + "/documents", json={"documents": [ok, other_loopback, v6, private]}, headers=ADMIN
    )
    items = {i["_id"]: i for i in r.json()["items"]}
    assert items["allowed"] == {"_id": "allowed", "status": 200}
    for key, fragment in (("127-0-0-2", "127.0.0.2 is a loopback"), ("v6-loopback", "::1 is a loopback")):
        assert items[key]["status"] == 400 and fragment in items[key]["message"], items[key]
    assert items["private"]["status"] == 400


REDIRECT_TARGETS = [
    ("http://10.0.0.1/x.jpg", "10.0.0.1 is a private address"),
    ("http://[::1]:{port}/cat.jpg", "::1 is a loopback address"),
    ("http://127.0.0.2:{port}/cat.jpg", "127.0.0.2 is a loopback address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://[::ffff:10.0.0.1]/x.jpg", "is a private address"),
    ("http://2130706434:{port}/cat.jpg", "resolves to 127.0.0.2, a loopback address"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("data:image/jpeg;base64,/9j/", "redirected to an invalid URL"),  # was a 500
    ("gopher://127.0.0.1:{port}/_x", "scheme 'gopher' is not allowed"),
]


@pytest.mark.parametrize(("location", "fragment"), REDIRECT_TARGETS, ids=[t for t, _ in REDIRECT_TARGETS])
async def test_redirects_into_private_space(only_127: App, server: ImageServer, location: str, fragment: str) -> None:
    path = f"/hop-{secrets.token_hex(3)}.jpg"
    url = server.add_redirect(path, location.format(port=server.port))
    before = len(server.requests)
    r = await only_127.client.post(
        only_127.base + "/documents",
        json={"documents": [product("hop", url), product("fine", server.url("/cat.jpg"))]},
        headers=ADMIN,
    )
    hop, fine = r.json()["items"]
    assert hop["status"] == 400 and fragment in hop["message"], hop
    assert fine == {"_id": "fine", "status": 200}
    for endpoint in ("/search", "/reverse-image-search"):
        r = await only_127.client.post(only_127.base + endpoint, json={"q": url}, headers=only_127.read)
        assert_error(r, 400, fragment=fragment)
    # Only the first hop was requested (three times), never the target.
    assert [p for p in server.requested_paths()[before:] if p != "/cat.jpg"] == [path] * 3


async def test_redirect_loop_is_capped(only_127: App, server: ImageServer) -> None:
    loop = f"/loop-{secrets.token_hex(3)}.jpg"
    server.add_redirect(loop, loop)
    r = await only_127.client.post(only_127.base + "/search", json={"q": server.url(loop)}, headers=only_127.read)
    assert_error(r, 400, "image_fetch_failed", "redirected more than 3 times")


async def test_slow_drip_image_host_is_cut_off(only_127: App, server: ImageServer) -> None:
    """A host that sends one byte every 50 ms (never idle long enough for the read timeout)."""
    drip = server.add_slow(f"/drip-{secrets.token_hex(3)}.jpg", JPEG, delay_s=0.05)
    started = time.monotonic()
    r = await only_127.client.post(
        only_127.base + "/documents",
        json={"documents": [product("drip", drip), product("quick", server.url("/cat.jpg"))]},
        headers=ADMIN,
    )
    elapsed = time.monotonic() - started
    drip_item, quick = r.json()["items"]
    assert drip_item["status"] == 400 and "timed out fetching image after 1 s" in drip_item["message"]
    assert quick == {"_id": "quick", "status": 200}
    assert elapsed < 5, elapsed
    for endpoint in ("/search", "/reverse-image-search"):
        started = time.monotonic()
        r = await only_127.client.post(only_127.base + endpoint, json={"q": drip}, headers=only_127.read)
        assert_error(r, 400, "image_fetch_timeout", "timed out")
        assert time.monotonic() - started < 5


async def test_a_host_that_never_answers(only_127: App) -> None:
    """Accepts the connection, never sends a byte: the read timeout / deadline ends it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/silent.jpg"
        started = time.monotonic()
        r = await only_127.client.post(only_127.base + "/search", json={"q": url}, headers=only_127.read)
        assert_error(r, 400, "image_fetch_timeout")
        assert time.monotonic() - started < 5
