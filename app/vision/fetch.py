"""SSRF-safe image fetching: data URLs and http(s) URLs from untrusted callers.

The rules (SPEC "Fetching images safely"):

- only `http` and `https`; every hop of a redirect chain is checked again;
- the host is resolved here, and every address it resolves to must be public
  (not loopback, private, link-local, multicast, reserved, unspecified, CGNAT,
  nor an IPv6 wrapper of such an IPv4 address) unless the operator allow-list
  permits the host name or the address;
- the connection goes to the address that was vetted: a custom httpcore network
  backend connects to the pinned IP while httpx keeps the URL's host name for the
  `Host` header, TLS SNI and certificate checks. Nothing resolves the name a
  second time, so a DNS answer that changes between check and connect (DNS
  rebinding) cannot redirect us into the private network;
- connect/read timeouts per operation, a total deadline per fetch, a byte cap
  counted while streaming (Content-Length is only used to refuse early), and a
  redirect cap.

Every failure is an `ImageError` whose message says what went wrong.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import ipaddress
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import httpcore
import httpx

from app.config import FetchAllowList, Settings
from app.errors import ImageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

USER_AGENT = "lookalike/0.1 (+image fetcher)"

# Error codes (the `code` of ImageError) a client can branch on.
CODE_BAD_URL = "invalid_image_url"
CODE_BLOCKED = "image_host_not_allowed"
CODE_FETCH = "image_fetch_failed"
CODE_TIMEOUT = "image_fetch_timeout"
CODE_TOO_LARGE = "image_too_large"
CODE_DATA_URL = "invalid_data_url"

_DEFAULT_PORTS = {"http": 80, "https": 443}
_DATA_URL_INLINE_CHARS = 256 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# The well-known NAT64 prefix embeds an IPv4 address in its low 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# (host, port) -> vetted addresses, for the hop being fetched by the current task.
# A contextvar because one shared connection pool serves concurrent fetches, each
# in its own task; the backend below reads the pins of the task that connects.
_PINS: contextvars.ContextVar[dict[tuple[str, int], tuple[str, ...]] | None] = contextvars.ContextVar(
    "lookalike_fetch_pins", default=None
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be fetched without an allow-list entry, or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = blocked_reason(inner)
            if reason is not None:
                return reason
    # Most specific first: 169.254.169.254 is both link-local and "private" to Python.
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:  # before private: Python counts 240.0.0.0/4 as both
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:  # CGNAT 100.64/10, benchmarking, documentation ranges, ...
        return "a non-public address"
    return None


def _address_allowed(allow: FetchAllowList, ip: IPAddress) -> bool:
    if allow.allows_address(ip):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        return inner is not None and allow.allows_address(inner)
    return False


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Resolve with the system resolver (in the loop's executor), addresses in answer order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: dict[IPAddress, None] = {}
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            # Strip an IPv6 zone id ("fe80::1%eth0"); the address alone decides.
            seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]), None)
    return list(seen)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the addresses vetted for (host, port) by the current task; fails closed."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pins = _PINS.get() or {}
        addresses = pins.get((host.lower(), port))
        if not addresses:
            raise httpcore.ConnectError(f"refusing to connect to {host}:{port}: address was not vetted")
        last: Exception | None = None
        for address in addresses:  # each vetted address in turn, like a plain resolver would
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never used for image fetching")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with a connection pool that connects through `_PinnedBackend`.

    httpx has no public hook for httpcore's network backend, so after the normal
    set-up the pool is replaced by an equivalent one that has it. The request and
    exception mapping of the parent class are kept. tests/test_fetch.py checks that
    connections really go through the pins (a host name only the test resolver
    knows is fetched).
    """

    def __init__(self, *, limits: httpx.Limits, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=_PinnedBackend(),
        )


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g} s"


class ImageFetcher:
    """Fetches image bytes from data URLs and http(s) URLs under the SSRF rules above.

    One instance per application (it owns a connection pool); call `aclose()` on
    shutdown. `resolver` exists for tests: it maps a host name to addresses
    instead of the system resolver, and its answers go through the same checks.
    """

    def __init__(self, settings: Settings, *, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self._allow = settings.fetch_allowlist
        self._resolve: Resolver = resolver or system_resolver
        self._semaphore = asyncio.Semaphore(max(1, settings.fetch_concurrency))
        limits = httpx.Limits(
            max_connections=max(1, settings.fetch_concurrency),
            max_keepalive_connections=max(1, settings.fetch_concurrency),
            keepalive_expiry=30.0,
        )
        self._timeout = httpx.Timeout(
            connect=settings.fetch_connect_timeout_s,
            read=settings.fetch_read_timeout_s,
            write=settings.fetch_read_timeout_s,
            pool=settings.fetch_total_timeout_s,
        )
        # trust_env=False: an HTTP(S)_PROXY from the environment would resolve and
        # connect on our behalf and defeat the address checks.
        self._client = httpx.AsyncClient(
            transport=_PinnedTransport(limits=limits, ssl_context=httpx.create_ssl_context(trust_env=False)),
            follow_redirects=False,
            trust_env=False,
            timeout=self._timeout,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "image/*,*/*;q=0.8",
                # Images are compressed already; identity keeps the byte cap about
                # bytes on the wire and rules out gzip bombs.
                "Accept-Encoding": "identity",
            },
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The bytes behind `url` (a `data:image/...;base64,` or http(s) URL), or ImageError."""
        if not isinstance(url, str) or not url.strip():
            raise ImageError("image URL is empty", CODE_BAD_URL)
        url = url.strip()
        if url[:5].lower() == "data:":
            if len(url) > _DATA_URL_INLINE_CHARS:  # base64 of megabytes: keep it off the event loop
                return await asyncio.to_thread(self._decode_data_url, url)
            return self._decode_data_url(url)
        total = self._settings.fetch_total_timeout_s
        try:
            async with asyncio.timeout(total):
                async with self._semaphore:
                    return await self._fetch_http(url)
        except TimeoutError:
            raise ImageError(f"timed out fetching image after {_fmt_s(total)}", CODE_TIMEOUT) from None

    # -- data URLs -------------------------------------------------------------

    def _decode_data_url(self, url: str) -> bytes:
        header, comma, payload = url[5:].partition(",")
        if not comma:
            raise ImageError("data URL has no ',' between its header and its data", CODE_DATA_URL)
        parts = [p.strip().lower() for p in header.split(";")]
        mime, params = parts[0], parts[1:]
        if not mime.startswith("image/") or len(mime) == len("image/"):
            raise ImageError(f"data URL must have an image/* MIME type, got {mime or 'none'!r}", CODE_DATA_URL)
        if "base64" not in params:
            raise ImageError("data URL must be base64-encoded (data:image/...;base64,...)", CODE_DATA_URL)
        if "%" in payload:  # RFC 2397 allows percent-encoding; some clients escape '+', '/', '='
            payload = urllib.parse.unquote(payload)
        limit = self._settings.fetch_max_bytes
        # Refuse before decoding: base64 needs 4 characters per 3 bytes.
        if len(payload) > 4 * (limit // 3 + 1):
            raise ImageError(f"image larger than {limit} bytes", CODE_TOO_LARGE)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("data URL is not valid base64", CODE_DATA_URL) from None
        if not data:
            raise ImageError("data URL contains no data", CODE_DATA_URL)
        if len(data) > limit:
            raise ImageError(f"image larger than {limit} bytes", CODE_TOO_LARGE)
        return data

    # -- http(s) ---------------------------------------------------------------

    def _parse(self, raw: str | httpx.URL) -> httpx.URL:
        try:
            url = raw if isinstance(raw, httpx.URL) else httpx.URL(raw)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ImageError(f"image URL is not a valid URL: {exc}", CODE_BAD_URL) from None
        if url.scheme not in _DEFAULT_PORTS:
            scheme = url.scheme or "(none)"
            raise ImageError(f"image URL scheme {scheme!r} is not allowed; use http or https", CODE_BAD_URL)
        if not url.raw_host:
            raise ImageError("image URL has no host", CODE_BAD_URL)
        return url

    async def _vet(self, host: str, port: int) -> tuple[str, ...]:
        """The addresses of `host` we may connect to, or ImageError saying why none."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            try:
                addresses = await self._resolve(host, port)
            except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
                reason = getattr(exc, "strerror", None) or str(exc)
                raise ImageError(f"could not resolve image host {host}: {reason}", CODE_FETCH) from None
            if not addresses:
                raise ImageError(f"image host {host} has no addresses", CODE_FETCH)
        if self._allow.allows_host(host):
            return tuple(str(a) for a in addresses)
        for address in addresses:
            # All must pass: a name answering with one public and one private
            # address would otherwise be a way in.
            reason = blocked_reason(address)
            if reason is None or _address_allowed(self._allow, address):
                continue
            if literal is not None:
                message = f"image host {host} is {reason} and is not allow-listed"
            else:
                message = f"image host {host} resolves to {address}, {reason}, which is not allow-listed"
            raise ImageError(message, CODE_BLOCKED)
        return tuple(str(a) for a in addresses)

    async def _fetch_http(self, raw_url: str) -> bytes:
        max_redirects = self._settings.fetch_max_redirects
        url = self._parse(raw_url)
        for _hop in range(max_redirects + 1):
            host = url.raw_host.decode("ascii").lower()
            port = url.port or _DEFAULT_PORTS[url.scheme]
            addresses = await self._vet(host, port)
            token = _PINS.set({(host, port): addresses})
            try:
                response = await self._send(url, host)
                try:
                    if response.status_code in _REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise ImageError(
                                f"image URL returned HTTP {response.status_code} without a Location",
                                CODE_FETCH,
                            )
                        url = self._parse(self._join(url, location))
                        continue
                    if not 200 <= response.status_code < 300:
                        raise ImageError(f"image URL returned HTTP {response.status_code}", CODE_FETCH)
                    return await self._read_capped(response, host)
                finally:
                    await response.aclose()
            finally:
                _PINS.reset(token)
        raise ImageError(f"image URL redirected more than {max_redirects} times", CODE_FETCH)

    @staticmethod
    def _join(base: httpx.URL, location: str) -> httpx.URL:
        try:
            return base.join(location)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ImageError(f"image URL redirected to an invalid URL: {exc}", CODE_BAD_URL) from None

    async def _send(self, url: httpx.URL, host: str) -> httpx.Response:
        try:
            return await self._client.send(self._client.build_request("GET", url), stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, host) from None
        except httpx.InvalidURL as exc:
            # httpx builds the next hop's URL even with follow_redirects=False, and raises InvalidURL
            # (not an HTTPError) for a Location such as `data:image/jpeg;base64,/9j/`: was a 500.
            raise ImageError(f"image URL redirected to an invalid URL: {exc}", CODE_BAD_URL) from None

    async def _read_capped(self, response: httpx.Response, host: str) -> bytes:
        limit = self._settings.fetch_max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ImageError(f"image larger than {limit} bytes", CODE_TOO_LARGE)
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:  # counted as it arrives; Content-Length may lie or be absent
                    raise ImageError(f"image larger than {limit} bytes", CODE_TOO_LARGE)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, host) from None
        if not body:
            raise ImageError("image URL returned an empty body", CODE_FETCH)
        return bytes(body)

    def _transport_error(self, exc: httpx.HTTPError, host: str) -> ImageError:
        if isinstance(exc, httpx.ConnectTimeout):
            return ImageError(
                f"timed out connecting to image host {host} after {_fmt_s(self._timeout.connect or 0)}",
                CODE_TIMEOUT,
            )
        if isinstance(exc, httpx.ReadTimeout):
            return ImageError(f"image host {host} sent nothing for {_fmt_s(self._timeout.read or 0)}", CODE_TIMEOUT)
        if isinstance(exc, httpx.TimeoutException):
            return ImageError(f"timed out talking to image host {host}", CODE_TIMEOUT)
        if isinstance(exc, httpx.ConnectError):
            return ImageError(f"could not connect to image host {host}: {exc or 'connection failed'}", CODE_FETCH)
        return ImageError(f"error fetching image from {host}: {exc or type(exc).__name__}", CODE_FETCH)
