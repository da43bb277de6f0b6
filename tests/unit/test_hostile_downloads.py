"""Download tricks of a workload from a URL (issue 8): every spelling of this host, its
metadata service or its private networks is refused before anything is fetched, redirects
included, and so is a URL that urllib and requests would read as different hosts. The same
holds for the parents a URL workload inherits from (other than its own server's files)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ccloudvm.app import provision
from ccloudvm.app.provision import fetch_to_cache
from ccloudvm.core.errors import UsageError
from ccloudvm.state.paths import StateDir
from ccloudvm.workloads.definition import load_workload
from ccloudvm.workloads.downloads import refuse_private_url
from ccloudvm.workloads.templating import TemplateContext
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
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
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


# ---------------------------------------------------------------- inherits of a URL workload


class _Site(BaseHTTPRequestHandler):
    """Answers from `pages`: a path's body, or a redirect when the entry starts with '>'."""

    pages: dict[str, str] = {}
    seen: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        pass

    def do_GET(self) -> None:
        type(self).seen.append(f"{self.server.server_address[1]}{self.path}")
        page = type(self).pages.get(self.path)
        if page is None:
            self.send_response(404)
            body = b""
        elif page.startswith(">"):
            self.send_response(302)
            self.send_header("Location", page[1:])
            body = b""
        else:
            self.send_response(200)
            body = page.encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def sites(no_host_proxy: None) -> Iterator[tuple[int, int]]:
    """Two servers on this host: the URL workload's own, and another of the host's services."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Site) for _ in range(2)]
    _Site.seen = []
    for server in servers:
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield servers[0].server_address[1], servers[1].server_address[1]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize(
    "inherits",
    [
        "http://127.0.0.1:{other}/parent.yaml",
        "http://2130706433:{other}/parent.yaml",
        "http://localhost.:{other}/parent.yaml",
        ">http://127.0.0.1:{other}/parent.yaml",  # its own server redirects there
        ">http://169.254.169.254/latest/user-data",
    ],
)
def test_a_url_workload_never_inherits_from_another_service_of_this_host(
    sites: tuple[int, int], tmp_path: Path, ctx: TemplateContext, inherits: str
) -> None:
    own, other = sites
    target = inherits.format(other=other)
    _Site.pages = {
        "/w.yaml": f"inherits: {'p.yaml' if target.startswith('>') else target}\n",
        "/p.yaml": target,
        "/parent.yaml": "image: x\n",
    }
    state = StateDir(tmp_path / "state")
    with pytest.raises(UsageError, match="a workload from a URL may not fetch from") as info:
        load_workload(state, f"http://127.0.0.1:{own}/w.yaml", ctx)
    assert "inherits: http" in info.value.message and "\n" not in info.value.message
    assert not any(seen.startswith(f"{other}/") for seen in _Site.seen), _Site.seen


def test_a_url_workload_inherits_from_its_own_server_through_a_redirect(
    sites: tuple[int, int], tmp_path: Path, ctx: TemplateContext
) -> None:
    own, _other = sites
    _Site.pages = {
        "/w.yaml": "inherits: p.yaml\nprovision: [{name: s, run: 'true'}]\n",
        "/p.yaml": ">/moved/p.yaml",
        "/moved/p.yaml": "image: x\n",
    }
    workload = load_workload(StateDir(tmp_path / "state"), f"http://127.0.0.1:{own}/w.yaml", ctx)
    assert workload.chain == ("p", "w") and workload.image == "x"
