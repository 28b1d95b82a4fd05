"""A loopback HTTP server for tests that fetch images; never touches the internet.

Usage::

    with ImageServer() as server:
        url = server.add("/cat.jpg", jpeg_bytes, "image/jpeg")
        server.add_redirect("/old.jpg", url)
        server.add_slow("/drip.jpg", jpeg_bytes, delay_s=0.5)
        ...  # fetch with a Settings whose fetch_allowlist permits server.allowlist()

Unregistered paths answer 404 (`server.url("/missing.jpg")`). The server runs in a
daemon thread on 127.0.0.1 with an ephemeral port; `requests` records the
(path, Host header) of every request, so tests can assert a refused URL was never
requested. As a pytest fixture::

    @pytest.fixture()
    def image_server():
        with ImageServer() as server:
            yield server
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from app.config import FetchAllowList


@dataclass
class Route:
    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Content-Length to declare: "auto" = len(body), None = none (close-delimited body).
    content_length: int | str | None = "auto"
    chunk_size: int = 64 * 1024
    delay_s: float = 0.0  # sleep before each chunk (slow drip)
    repeat: int = 1  # send body this many times (large bodies without large test data)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle on, a reused keep-alive connection
    # held the body until the client's delayed ACK (~40 ms), which benchmarks counted as decode.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.owner._record(path, self.headers.get("Host", ""))
        route = self.server.owner.routes.get(path)
        if route is None:
            route = Route(body=b"not found", content_type="text/plain", status=404)
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        for name, value in route.headers.items():
            self.send_header(name, value)
        declared = route.content_length
        if declared == "auto":
            declared = len(route.body) * route.repeat
        if declared is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(declared))
        self.end_headers()
        try:
            for _ in range(route.repeat):
                for start in range(0, len(route.body), route.chunk_size):
                    if route.delay_s:
                        time.sleep(route.delay_s)
                    self.wfile.write(route.body[start : start + route.chunk_size])
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (byte cap, timeout): expected


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ImageServer

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up mid-exchange (byte caps, timeouts) are what tests provoke.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class ImageServer:
    """Serves registered byte payloads over HTTP on 127.0.0.1; see the module docstring."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> ImageServer:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="imageserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "ImageServer is not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @staticmethod
    def allowlist() -> FetchAllowList:
        """An allow-list that admits this server's address (127.0.0.1) and nothing else."""
        return FetchAllowList.parse("127.0.0.1")

    # -- routes ----------------------------------------------------------------

    def add(
        self,
        path: str,
        body: bytes,
        content_type: str = "image/jpeg",
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_length: int | str | None = "auto",
        repeat: int = 1,
        chunk_size: int = 64 * 1024,
    ) -> str:
        """Serve `body` at `path`; returns its URL. `content_length` may lie (an int) or be None."""
        self.routes[path] = Route(
            body=body,
            content_type=content_type,
            status=status,
            headers=dict(headers or {}),
            content_length=content_length,
            repeat=repeat,
            chunk_size=chunk_size,
        )
        return self.url(path)

    def add_redirect(self, path: str, location: str, status: int = 302) -> str:
        """Answer `path` with a redirect to `location` (any URL, absolute or relative)."""
        self.routes[path] = Route(body=b"", content_type="text/plain", status=status, headers={"Location": location})
        return self.url(path)

    def add_slow(self, path: str, body: bytes, *, delay_s: float = 0.5, chunk_size: int = 1) -> str:
        """Drip `body` a `chunk_size` at a time with `delay_s` between chunks (no Content-Length)."""
        self.routes[path] = Route(
            body=body, content_type="image/jpeg", content_length=None, chunk_size=chunk_size, delay_s=delay_s
        )
        return self.url(path)

    def _record(self, path: str, host: str) -> None:
        with self._lock:
            self.requests.append((path, host))

    def requested_paths(self) -> list[str]:
        with self._lock:
            return [p for p, _ in self.requests]
