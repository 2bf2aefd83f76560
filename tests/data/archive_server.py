"""A local HTTP server for download tests: serves byte strings on 127.0.0.1 with HTTP Range
support, logs every request, and can cut a transfer halfway or answer 503 a few times.

Example:
    >>> with ArchiveServer({"/a.zip": b"..."}) as server:        # doctest: +SKIP
    ...     url = server.url("/a.zip")
"""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

_RANGE = re.compile(r"bytes=(\d+)-$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet tests
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        if srv.fail.get(self.path, 0) > 0:
            srv.fail[self.path] -= 1
            self.send_error(503, "Service Unavailable")
            return
        start = 0
        match = _RANGE.match(rng or "")
        if match:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.path in srv.cut:  # send half, then drop the connection
            srv.cut.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]]
    cut: set[str]
    fail: dict[str, int]


class ArchiveServer:
    """``files`` ({URL path: bytes}) served on 127.0.0.1 in a background thread."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.files = dict(files)
        self.httpd.requests = []
        self.httpd.cut = set()
        self.httpd.fail = {}
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        """``(path, Range header or None)`` of every request so far."""
        return self.httpd.requests

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def cut_next(self, path: str) -> None:
        """The next request of ``path`` gets half its body, then the connection drops."""
        self.httpd.cut.add(path)

    def fail_next(self, path: str, times: int) -> None:
        """The next ``times`` requests of ``path`` get HTTP 503."""
        self.httpd.fail[path] = times

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def closed_port() -> int:
    """A local port nothing listens on (connection refused: the offline case)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
