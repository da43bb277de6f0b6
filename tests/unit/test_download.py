"""Downloads against a real HTTP server on 127.0.0.1: resume, checksums, errors, proxies."""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ccloudvm.core.errors import CcloudvmError
from ccloudvm.images.download import download, fetch_sha256sums, parse_sha256sums
from tests.support.httpserver import FileServer, serve_directory

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not all one byte value
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


pytestmark = pytest.mark.usefixtures("no_host_proxy")


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, FileServer]]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "disk.img").write_bytes(PAYLOAD)
    (root / "SHA256SUMS").write_text(f"{DIGEST}  disk.img\n{'0' * 64} *other.img\n")
    with serve_directory(root) as pair:
        yield pair


def test_full_download_is_verified_and_renamed(
    served: tuple[str, FileServer], tmp_path: Path
) -> None:
    base, _ = served
    dest = tmp_path / "cache" / "disk.img"
    assert download(f"{base}/disk.img", dest, DIGEST) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("disk.img.part").exists()


def test_resume_after_cut_off_uses_a_range_request(
    served: tuple[str, FileServer], tmp_path: Path
) -> None:
    base, server = served
    dest = tmp_path / "disk.img"
    server.cut_next_response(after_bytes=300_000)
    with pytest.raises(CcloudvmError) as failed:
        download(f"{base}/disk.img", dest, DIGEST)
    assert "partial download is kept" in str(failed.value)
    part = tmp_path / "disk.img.part"
    assert 0 < part.stat().st_size < len(PAYLOAD)
    assert not dest.exists()

    kept = part.stat().st_size
    download(f"{base}/disk.img", dest, DIGEST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1].headers.get("Range") == f"bytes={kept}-"


def test_server_ignoring_range_restarts_from_zero(
    served: tuple[str, FileServer], tmp_path: Path
) -> None:
    base, server = served
    part = tmp_path / "disk.img.part"
    part.write_bytes(b"garbage that is not the start of the file")
    server.ignore_ranges()
    download(f"{base}/disk.img", tmp_path / "disk.img", DIGEST)
    assert (tmp_path / "disk.img").read_bytes() == PAYLOAD
    assert "Range" in server.requests[-1].headers


def test_checksum_mismatch_leaves_no_file(served: tuple[str, FileServer], tmp_path: Path) -> None:
    base, _ = served
    dest = tmp_path / "disk.img"
    wrong = "ab" * 32
    with pytest.raises(CcloudvmError) as failed:
        download(f"{base}/disk.img", dest, wrong)
    message = str(failed.value)
    assert f"{base}/disk.img" in message and wrong in message and DIGEST in message
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


def test_existing_verified_file_is_not_downloaded_again(
    served: tuple[str, FileServer], tmp_path: Path
) -> None:
    base, server = served
    dest = tmp_path / "disk.img"
    download(f"{base}/disk.img", dest, DIGEST)
    seen = len(server.requests)
    download(f"{base}/disk.img", dest, DIGEST)
    assert len(server.requests) == seen


def test_404_is_a_clear_error(served: tuple[str, FileServer], tmp_path: Path) -> None:
    base, _ = served
    with pytest.raises(CcloudvmError, match=r"missing\.img: HTTP 404"):
        download(f"{base}/missing.img", tmp_path / "x", DIGEST)
    assert not (tmp_path / "x").exists()


def test_connection_refused_is_one_line(tmp_path: Path) -> None:
    with serve_directory(tmp_path) as (base, _):
        pass  # the port is closed again: nothing listens there now
    with pytest.raises(CcloudvmError) as failed:
        download(f"{base}/disk.img", tmp_path / "disk.img", DIGEST)
    assert "\n" not in str(failed.value)
    assert str(failed.value).startswith(f"download of {base}/disk.img failed")


def test_sha256sums_parsing() -> None:
    text = (
        f"{'A' * 64}  noble-server-cloudimg-amd64.img\n"
        f"{'b' * 64} *binary-mode.img\n"
        f"{'c' * 64}  ./dotted.tar.xz\n"
        "not a checksum line\n"
        "\n"
    )
    assert parse_sha256sums(text) == {
        "noble-server-cloudimg-amd64.img": "a" * 64,
        "binary-mode.img": "b" * 64,
        "dotted.tar.xz": "c" * 64,
    }


def test_fetch_sha256sums(served: tuple[str, FileServer]) -> None:
    base, _ = served
    assert fetch_sha256sums(f"{base}/SHA256SUMS") == {"disk.img": DIGEST, "other.img": "0" * 64}
    with pytest.raises(CcloudvmError, match="HTTP 404"):
        fetch_sha256sums(f"{base}/NOPE")


class _ForwardingProxy(ThreadingHTTPServer):
    """A plain HTTP proxy on loopback that records the absolute URLs it forwarded."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[str] = []


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _ForwardingProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        target = urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.netloc, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
        upstream.request("GET", target.path, headers=headers)
        answer = upstream.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("connection", "transfer-encoding"):
                self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        upstream.close()


def test_proxy_environment_is_honoured(
    served: tuple[str, FileServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, server = served
    proxy = _ForwardingProxy()
    thread = threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        host, port = proxy.server_address[:2]
        monkeypatch.setenv("http_proxy", f"http://{host!s}:{port}")
        download(f"{base}/disk.img", tmp_path / "disk.img", DIGEST)
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)
    assert proxy.seen == [f"{base}/disk.img"]
    assert (tmp_path / "disk.img").read_bytes() == PAYLOAD
    assert len(server.requests) == 1
