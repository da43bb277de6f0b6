"""A small, real HTTP proxy on 127.0.0.1 for end-to-end tests.

Threaded; forwards absolute-URI GET/HEAD requests to the origin and tunnels CONNECT.
Only the hosts in `allowed` may be reached (Debian's archive, by default): anything else
is answered 403. Every request is logged in memory (method, target, host, client, status)
so a test can show from the proxy's own log what went through it.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DEBIAN_HOSTS = frozenset({"deb.debian.org", "security.debian.org"})
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    target: str  # the absolute URI, or host:port for CONNECT
    host: str
    client: str  # the client's address as the proxy saw it
    user_agent: str
    status: int


@dataclass
class _Log:
    entries: list[ProxyRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: ProxyRequest) -> None:
        with self.lock:
            self.entries.append(entry)


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, allowed: frozenset[str] = DEBIAN_HOSTS) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.allowed = allowed
        self.log = _Log()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[ProxyRequest]:
        with self.log.lock:
            return list(self.log.entries)


class _Handler(BaseHTTPRequestHandler):
    server: ProxyServer
    protocol_version = "HTTP/1.1"  # apt pipelines requests on one connection
    timeout = 120

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # the in-memory log is the record; keep pytest's output quiet

    def _record(self, host: str, status: int) -> None:
        self.server.log.add(
            ProxyRequest(
                method=self.command,
                target=self.path,
                host=host,
                client=self.client_address[0],
                user_agent=self.headers.get("User-Agent", ""),
                status=status,
            )
        )

    def _refuse(self, host: str, status: int, reason: str) -> None:
        self._record(host, status)
        body = f"{reason}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_CONNECT(self) -> None:  # noqa: N802 - http.server's naming
        host, _, port_text = self.path.rpartition(":")
        if host not in self.server.allowed or not port_text.isdigit():
            self._refuse(host or self.path, 403, f"{self.path} is not allowed by the test proxy")
            self.close_connection = True
            return
        try:
            upstream = socket.create_connection((host, int(port_text)), timeout=30)
        except OSError as exc:
            self._refuse(host, 502, f"cannot reach {self.path}: {exc}")
            self.close_connection = True
            return
        self._record(host, 200)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self._pipe(self.connection, upstream)
        self.close_connection = True

    @staticmethod
    def _pipe(client: socket.socket, upstream: socket.socket) -> None:
        try:
            sockets = [client, upstream]
            while True:
                readable, _, broken = select.select(sockets, [], sockets, 120)
                if broken or not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()

    def _forward(self) -> None:
        parts = urlsplit(self.path)
        host = parts.hostname or ""
        if parts.scheme != "http" or not host:
            self._refuse(host or self.path, 400, "only absolute http:// URIs are proxied")
            return
        if host not in self.server.allowed:
            self._refuse(host, 403, f"{host} is not allowed by the test proxy")
            return
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            conn = http.client.HTTPConnection(host, parts.port or 80, timeout=60)
            conn.request(self.command, path, headers=headers)
            reply = conn.getresponse()
        except OSError as exc:
            self._refuse(host, 502, f"cannot reach {host}: {exc}")
            return
        try:
            self._record(host, reply.status)
            self.send_response(reply.status, reply.reason)
            length = reply.getheader("Content-Length")
            for key, value in reply.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            chunked = self.command != "HEAD" and length is None and reply.status not in (204, 304)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                return
            while chunk := reply.read(65536):
                if chunked:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                else:
                    self.wfile.write(chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            conn.close()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._forward()

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._forward()

    def _not_supported(self) -> None:
        self._refuse(urlsplit(self.path).hostname or self.path, 405, "method not supported")

    do_POST = do_PUT = do_DELETE = _not_supported  # noqa: N815


@contextmanager
def run_proxy(allowed: frozenset[str] = DEBIAN_HOSTS) -> Iterator[ProxyServer]:
    """A proxy on 127.0.0.1 (a free port) for the duration of the block."""
    server = ProxyServer(allowed)
    thread = threading.Thread(target=server.serve_forever, name="test-proxy", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
