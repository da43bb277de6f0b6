"""Download tricks of a workload from a URL (issue 8): every spelling of this host, its
metadata service or its private networks is refused before anything is fetched, redirects
included, and so is a URL that urllib and requests would read as different hosts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ccloudvm.app import provision
from ccloudvm.app.provision import fetch_to_cache
from ccloudvm.core.errors import UsageError
from ccloudvm.workloads.downloads import refuse_private_url
from tests.support.httpserver import serve_directory

TRICKS = [
    ("http://2130706433/x", "127.0.0.1"),  # decimal
    ("http://0x7f000001/x", "127.0.0.1"),  # hexadecimal
    ("http://0177.0.0.1/x", "127.0.0.1"),  # octal
    ("http://127.1/x", "127.0.0.1"),  # short form
    ("http://0/x", "0.0.0.0"),
    ("http://[::]/x", "::"),
    ("http://[::ffff:127.0.0.1]/x", "::ffff:7f00:1"),  # IPv4-mapped IPv6
    ("http://[::ffff:a9fe:a9fe]/x", "::ffff:a9fe:a9fe"),  # 169.254.169.254, mapped
    ("http://2852039166/latest/meta-data/", "169.254.169.254"),  # the metadata service
    ("http://169.254.169.254./x", "169.254.169.254"),  # a final dot
    ("http://localhost./x", "127.0.0.1"),
    ("http://LOCALHOST/x", "127.0.0.1"),
    ("http://foo.localhost/x", "127.0.0.1"),
    ("http://93.184.216.34@127.0.0.1/x", "127.0.0.1"),  # user info in front
    ("http://127.0.0.1#@93.184.216.34/", "127.0.0.1"),  # a fragment hiding the host
    ("http://127.0.0.1:80\\@93.184.216.34/x", "127.0.0.1"),  # requests' host != urllib's
    ("http://[fe80::1%25eth0]/x", "fe80::1"),  # link-local with a zone
    ("http://100.64.0.1/x", "100.64.0.1"),  # carrier-grade NAT
    ("http://224.0.0.1/x", "224.0.0.1"),  # multicast
]


@pytest.mark.parametrize(("url", "address"), TRICKS)
def test_every_spelling_of_a_private_address_is_refused(url: str, address: str) -> None:
    with pytest.raises(UsageError) as info:
        refuse_private_url(url, "workload w")
    message = info.value.message
    assert f"may not fetch from {address}, a loopback, link-local or private" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34/img", "https://[2606:2800:220:1::]/img", "http://8.8.8.8./x"]
)
def test_public_addresses_are_let_through(url: str) -> None:
    refuse_private_url(url, "workload w")


def test_a_url_requests_reads_as_loopback_reaches_nothing(
    tmp_path: Path, no_host_proxy: None
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "x").write_text("secret of a loopback service")
    with serve_directory(www) as (base_url, server):
        port = base_url.rstrip("/").rsplit(":", 1)[1]
        with pytest.raises(UsageError, match="may not fetch from 127.0.0.1"):
            fetch_to_cache(
                f"http://127.0.0.1:{port}\\@93.184.216.34/x", tmp_path / "c" / "x", public_only=True
            )
        assert server.requests == []
    assert not (tmp_path / "c" / "x").exists()


class _Redirector(BaseHTTPRequestHandler):
    location = ""
    seen: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        pass

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        self.send_response(302)
        self.send_header("Location", type(self).location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def redirector(monkeypatch: pytest.MonkeyPatch, no_host_proxy: None) -> Iterator[str]:
    """A server on 127.0.0.1 that redirects every request; its own first address counts
    as public here (as a server on the internet would be), so only the hop is tested."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    _Redirector.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    first = f"http://127.0.0.1:{server.server_address[1]}/start"
    real = provision.refuse_private_url

    def all_but_the_first(url: str, where: str) -> None:
        if url != first:
            real(url, where)

    monkeypatch.setattr(provision, "refuse_private_url", all_but_the_first)
    try:
        yield first
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("location", "address"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "169.254.169.254"),
        ("http://2130706433:{port}/again", "127.0.0.1"),  # back to this host, in decimal
        ("/again", "127.0.0.1"),  # a relative redirect stays on the (now known) host
    ],
)
def test_a_redirect_to_a_private_address_is_not_followed(
    redirector: str, tmp_path: Path, location: str, address: str
) -> None:
    _Redirector.location = location.format(port=redirector.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(UsageError, match=f"may not fetch from {address}"):
        fetch_to_cache(redirector, tmp_path / "c" / "x", public_only=True)
    assert _Redirector.seen == ["/start"]  # the redirect was never followed
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []
