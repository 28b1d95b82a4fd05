"""ImageFetcher: SSRF rules, redirects, limits and data URLs, against a loopback server only."""

from __future__ import annotations

import base64
import dataclasses
import io
import ipaddress
import socket
import time
from collections.abc import Iterator, Sequence

import httpcore
import pytest
from PIL import Image

from app.config import FetchAllowList, Settings
from app.errors import ImageError
from app.vision.decode import decode_image
from app.vision.fetch import ImageFetcher, IPAddress, _PinnedBackend, blocked_reason
from tests.imageserver import ImageServer


def _jpeg(size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


JPEG = _jpeg()


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as s:
        s.add("/cat.jpg", JPEG, "image/jpeg")
        s.add("/page.html", b"<!doctype html><html><body>hello</body></html>", "text/html")
        s.add("/boom.jpg", b"x", "image/jpeg", status=500)
        yield s


def _settings(allow: str | FetchAllowList = "", **overrides: object) -> Settings:
    allowlist = allow if isinstance(allow, FetchAllowList) else FetchAllowList.parse(allow)
    return dataclasses.replace(Settings(), fetch_allowlist=allowlist, **overrides)  # type: ignore[arg-type]


async def _fetch(settings: Settings, url: str, **kwargs: object) -> bytes:
    fetcher = ImageFetcher(settings, **kwargs)  # type: ignore[arg-type]
    try:
        return await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


async def _refused(settings: Settings, url: str, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        await _fetch(settings, url, **kwargs)
    return info.value


# -- happy path and pinning ----------------------------------------------------


async def test_fetches_from_allow_listed_loopback(server: ImageServer) -> None:
    assert await _fetch(_settings("127.0.0.1"), server.url("/cat.jpg")) == JPEG


async def test_allow_list_by_host_name(server: ImageServer) -> None:
    assert await _fetch(_settings("localhost"), server.url("/cat.jpg", host="localhost")) == JPEG


async def test_connects_to_the_vetted_address_keeping_the_host_name(server: ImageServer) -> None:
    # Only the test resolver knows catalog.test, so success proves the connection
    # went to the pinned address, while the Host header kept the name.
    async def resolver(host: str, port: int) -> Sequence[IPAddress]:
        assert host == "catalog.test"
        return [ipaddress.ip_address("127.0.0.1")]

    before = len(server.requests)
    data = await _fetch(_settings("127.0.0.1"), server.url("/cat.jpg", host="catalog.test"), resolver=resolver)
    assert data == JPEG
    assert server.requests[before:] == [("/cat.jpg", f"catalog.test:{server.port}")]


async def test_backend_refuses_unvetted_connections(server: ImageServer) -> None:
    with pytest.raises(httpcore.ConnectError, match="not vetted"):
        await _PinnedBackend().connect_tcp("127.0.0.1", server.port)


# -- address rules -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://127.0.0.1:{port}/cat.jpg",
            "image host 127.0.0.1 is a loopback address and is not allow-listed",
        ),
        ("http://localhost:{port}/cat.jpg", "image host localhost resolves to"),
        ("http://[::1]:{port}/cat.jpg", "image host ::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/cat.jpg", "is a loopback address"),
        ("http://[::ffff:7f00:1]:{port}/cat.jpg", "is a loopback address"),
        ("http://10.0.0.5/x.jpg", "image host 10.0.0.5 is a private address and is not allow-listed"),
        ("http://192.168.1.1/x.jpg", "is a private address"),
        ("http://172.16.0.1/x.jpg", "is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://0.0.0.0:{port}/cat.jpg", "is an unspecified address"),
        ("http://224.0.0.1/x.jpg", "is a multicast address"),
        ("http://100.64.0.1/x.jpg", "is a non-public address"),
        ("http://240.0.0.1/x.jpg", "is a reserved address"),
        ("http://[fe80::1]/x.jpg", "is a link-local address"),
        ("http://[fc00::1]/x.jpg", "is a private address"),
        ("http://[64:ff9b::a00:1]/x.jpg", "is a private address"),  # NAT64 of 10.0.0.1
        ("http://[2002:7f00:1::]/x.jpg", "is a loopback address"),  # 6to4 of 127.0.0.1
        (
            "http://2130706433:{port}/cat.jpg",
            "image host 2130706433 resolves to 127.0.0.1, a loopback address",
        ),
        ("http://0x7f.1:{port}/cat.jpg", "resolves to 127.0.0.1, a loopback address"),
        ("http://017700000001:{port}/cat.jpg", "resolves to 127.0.0.1, a loopback address"),
        ("http://0177.0.0.1:{port}/cat.jpg", "not a valid URL"),
    ],
)
async def test_refuses_non_public_addresses(server: ImageServer, url: str, expected: str) -> None:
    before = len(server.requests)
    err = await _refused(_settings(""), url.format(port=server.port))
    assert expected in err.message
    assert len(server.requests) == before  # refused before connecting


async def test_a_name_with_any_private_address_is_refused() -> None:
    async def resolver(host: str, port: int) -> Sequence[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.1.2.3")]

    err = await _refused(_settings(""), "http://mixed.test/x.jpg", resolver=resolver)
    assert err.message == "image host mixed.test resolves to 10.1.2.3, a private address, which is not allow-listed"
    assert err.code == "image_host_not_allowed"


async def test_unresolvable_host() -> None:
    async def resolver(host: str, port: int) -> Sequence[IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    err = await _refused(_settings(""), "http://nowhere.test/x.jpg", resolver=resolver)
    assert err.message == "could not resolve image host nowhere.test: Name or service not known"


def test_public_addresses_pass() -> None:
    for ip in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4001:82b::200e"):
        assert blocked_reason(ipaddress.ip_address(ip)) is None, ip


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://example.com/_x", "javascript:alert(1)"]
)
async def test_refuses_other_schemes(url: str) -> None:
    err = await _refused(_settings(""), url)
    assert "is not allowed; use http or https" in err.message


# -- redirects -----------------------------------------------------------------


async def test_follows_redirects_and_checks_each_hop(server: ImageServer) -> None:
    server.add_redirect("/old.jpg", "/cat.jpg", status=301)
    assert await _fetch(_settings("127.0.0.1"), server.url("/old.jpg")) == JPEG


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://10.0.0.1/x.jpg", "image host 10.0.0.1 is a private address and is not allow-listed"),
        ("http://[::1]:{port}/cat.jpg", "image host ::1 is a loopback address and is not allow-listed"),
        ("http://169.254.169.254/latest/meta-data/", "is a link-local address"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ],
)
async def test_redirect_into_a_blocked_address_is_refused(server: ImageServer, location: str, expected: str) -> None:
    server.add_redirect("/hop.jpg", location.format(port=server.port))
    before = len(server.requests)
    started = time.monotonic()
    err = await _refused(_settings("127.0.0.1"), server.url("/hop.jpg"))
    assert expected in err.message
    assert server.requested_paths()[before:] == ["/hop.jpg"]
    assert time.monotonic() - started < 2  # refused without trying to connect


async def test_redirect_to_an_unparseable_location(server: ImageServer) -> None:
    server.add_redirect("/odd.jpg", "data:image/jpeg;base64,/9j/")
    err = await _refused(_settings("127.0.0.1"), server.url("/odd.jpg"))
    assert err.message.startswith("image URL redirected to an invalid URL")
    assert err.code == "invalid_image_url"


async def test_redirect_cap(server: ImageServer) -> None:
    for i in range(4):
        server.add_redirect(f"/chain{i}.jpg", f"/chain{i + 1}.jpg")
    server.add("/chain4.jpg", JPEG)
    settings = _settings("127.0.0.1", fetch_max_redirects=3)
    err = await _refused(settings, server.url("/chain0.jpg"))
    assert err.message == "image URL redirected more than 3 times"
    assert await _fetch(settings, server.url("/chain1.jpg")) == JPEG  # exactly 3 is fine


# -- responses -----------------------------------------------------------------


async def test_http_errors(server: ImageServer) -> None:
    err = await _refused(_settings("127.0.0.1"), server.url("/missing.jpg"))
    assert err.message == "image URL returned HTTP 404"
    err = await _refused(_settings("127.0.0.1"), server.url("/boom.jpg"))
    assert err.message == "image URL returned HTTP 500"


async def test_non_image_bytes_fail_at_decode(server: ImageServer) -> None:
    data = await _fetch(_settings("127.0.0.1"), server.url("/page.html"))
    with pytest.raises(ImageError, match="not an image"):
        decode_image(data, 1_000_000)


async def test_connection_refused() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = await _refused(_settings("127.0.0.1"), f"http://127.0.0.1:{port}/x.jpg")
    assert err.message.startswith("could not connect to image host 127.0.0.1")


async def test_byte_cap_while_streaming(server: ImageServer) -> None:
    settings = _settings("127.0.0.1", fetch_max_bytes=100_000)
    chunk = b"\xff" * 10_000
    # No Content-Length at all (close-delimited): only counting can stop it.
    server.add("/endless.jpg", chunk, content_length=None, repeat=1000, chunk_size=10_000)
    err = await _refused(settings, server.url("/endless.jpg"))
    assert err.message == "image larger than 100000 bytes"
    assert err.code == "image_too_large"
    # A Content-Length over the cap is refused before reading the body.
    server.add("/huge.jpg", chunk, content_length=10**9)
    err = await _refused(settings, server.url("/huge.jpg"))
    assert err.message == "image larger than 100000 bytes"
    # Under the cap is fine.
    server.add("/ok.jpg", chunk, content_length=None, repeat=10)
    assert len(await _fetch(settings, server.url("/ok.jpg"))) == 100_000


async def test_slow_drip_is_cut_off_by_the_total_timeout(server: ImageServer) -> None:
    # Each byte arrives well within the read timeout; only the total deadline stops it.
    server.add_slow("/drip.jpg", JPEG, delay_s=0.05)
    settings = _settings("127.0.0.1", fetch_total_timeout_s=0.5, fetch_read_timeout_s=2.0)
    started = time.monotonic()
    err = await _refused(settings, server.url("/drip.jpg"))
    assert err.message == "timed out fetching image after 0.5 s"
    assert err.code == "image_fetch_timeout"
    assert time.monotonic() - started < 1.5


async def test_read_timeout(server: ImageServer) -> None:
    server.add_slow("/stall.jpg", JPEG, delay_s=1.0)
    settings = _settings("127.0.0.1", fetch_total_timeout_s=5.0, fetch_read_timeout_s=0.2)
    err = await _refused(settings, server.url("/stall.jpg"))
    assert err.message == "image host 127.0.0.1 sent nothing for 0.2 s"


# -- data URLs -----------------------------------------------------------------


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


async def test_data_urls() -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png, "PNG")
    raw = png.getvalue()
    settings = _settings("")
    assert await _fetch(settings, _data_url(raw)) == raw
    assert await _fetch(settings, _data_url(raw, "image/x-anything")) == raw  # any image/* type
    escaped = base64.b64encode(raw).decode().replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert await _fetch(settings, "data:image/png;base64," + escaped) == raw
    assert await _fetch(settings, "DATA:image/PNG;BASE64," + base64.b64encode(raw).decode()) == raw


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("data:text/plain;base64,aGVsbG8=", "data URL must have an image/* MIME type, got 'text/plain'"),
        ("data:;base64,aGVsbG8=", "data URL must have an image/* MIME type, got 'none'"),
        ("data:image/png,rawbytes", "data URL must be base64-encoded"),
        ("data:image/png;base64", "data URL has no ',' between its header and its data"),
        ("data:image/png;base64,not*base64!", "data URL is not valid base64"),
        ("data:image/png;base64,aGVsbG8", "data URL is not valid base64"),  # bad padding
        ("data:image/png;base64,aGVs bG8=", "data URL is not valid base64"),
        ("data:image/png;base64,", "data URL contains no data"),
    ],
)
async def test_bad_data_urls(url: str, expected: str) -> None:
    err = await _refused(_settings(""), url)
    assert err.message.startswith(expected)


async def test_data_url_size_cap() -> None:
    settings = _settings("", fetch_max_bytes=1000)
    assert len(await _fetch(settings, _data_url(b"x" * 1000))) == 1000
    err = await _refused(settings, _data_url(b"x" * 1001))
    assert err.message == "image larger than 1000 bytes"
    err = await _refused(settings, _data_url(b"x" * 100_000))
    assert err.message == "image larger than 1000 bytes"
    big = b"\x89PNG" + bytes(range(256)) * 4096  # decoded in a thread (over 256 KiB of base64)
    assert await _fetch(_settings(""), _data_url(big)) == big
