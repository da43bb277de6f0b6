"""A small threaded HTTP server on 127.0.0.1 serving a directory, for tests.

It answers Range requests (206 + Content-Range), records every request it saw, and
can be told to cut the next response off after N bytes, to test resumed downloads.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Behaviour:
    cut_after: int | None = None  # applies once, to the next GET with a body
    cut_path: str | None = None  # ... whose path ends with this, if set
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    seen: list[SeenRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.behaviour = _Behaviour()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def cut_next_response(self, after_bytes: int, path_suffix: str | None = None) -> None:
        """Close the connection of the next GET (of a path ending in `path_suffix`, if
        given) after sending `after_bytes` body bytes."""
        with self.behaviour.lock:
            self.behaviour.cut_after = after_bytes
            self.behaviour.cut_path = path_suffix

    def ignore_ranges(self, value: bool = True) -> None:
        self.behaviour.ignore_range = value

    @property
    def requests(self) -> list[SeenRequest]:
        with self.behaviour.lock:
            return list(self.behaviour.seen)

    def _take_cut(self, path: str) -> int | None:
        with self.behaviour.lock:
            wanted = self.behaviour.cut_path
            if wanted is not None and not path.endswith(wanted):
                return None
            cut, self.behaviour.cut_after = self.behaviour.cut_after, None
            return cut


class _Handler(BaseHTTPRequestHandler):
    server: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        return  # keep test output quiet

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        with self.server.behaviour.lock:
            self.server.behaviour.seen.append(
                SeenRequest(self.command, self.path, {k: v for k, v in self.headers.items()})
            )
        target = (self.server.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
        if not target.is_file() or self.server.root not in target.parents:
            self._send_empty(HTTPStatus.NOT_FOUND)
            return
        data = target.read_bytes()
        start, end = 0, len(data) - 1
        status = HTTPStatus.OK
        range_header = self.headers.get("Range")
        if range_header and not self.server.behaviour.ignore_range:
            match = _RANGE.match(range_header.strip())
            if match is None or int(match.group(1)) >= len(data):
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match.group(1))
            if match.group(2):
                end = min(end, int(match.group(2)))
            status = HTTPStatus.PARTIAL_CONTENT
        body = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if not send_body:
            return
        cut = self.server._take_cut(self.path)
        if cut is not None and cut < len(body):
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _send_empty(self, status: HTTPStatus) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def serve_directory(path: Path) -> Iterator[tuple[str, FileServer]]:
    """Serve `path` on a free port of 127.0.0.1; yields (base_url, server)."""
    server = FileServer(path)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.base_url, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
