"""Proxy settings: reading the host's variables and the guest's view of them."""

from __future__ import annotations

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.guest.proxy import ProxySettings, for_guest, read_host_proxies


def test_lower_case_wins_over_upper_case() -> None:
    p = read_host_proxies(
        {
            "http_proxy": "http://lower:1",
            "HTTP_PROXY": "http://upper:2",
            "HTTPS_PROXY": "http://u:3",
        }
    )
    assert p.http == "http://lower:1"
    assert p.https == "http://u:3"  # only the upper-case form set: it is used


def test_scheme_added_and_no_proxy_split_and_deduplicated() -> None:
    p = read_host_proxies({"http_proxy": "proxy.corp:3128", "no_proxy": " a.corp, ,b,a.corp "})
    assert p.http == "http://proxy.corp:3128"
    assert p.https is None
    assert p.no_proxy == ["a.corp", "b"]


def test_no_variables_means_empty() -> None:
    p = read_host_proxies({"no_proxy": "x"})
    assert p.is_empty()
    assert p.as_env() == {}


@pytest.mark.parametrize(
    "value", ['http://a"b:1', "http://x:1;rm -rf /", "http://a b:1", "http://$(x):1"]
)
def test_values_that_could_break_out_of_quotes_are_refused(value: str) -> None:
    with pytest.raises(UsageError, match="http_proxy"):
        read_host_proxies({"http_proxy": value})


def test_bad_no_proxy_entry_is_refused() -> None:
    with pytest.raises(UsageError, match="no_proxy entry"):
        read_host_proxies({"http_proxy": "http://p:1", "no_proxy": "ok,bad`x`"})


@pytest.mark.parametrize(
    ("host_value", "guest_value"),
    [
        ("http://127.0.0.1:3128", "http://10.0.2.2:3128"),
        ("http://127.1.2.3:8080/", "http://10.0.2.2:8080/"),
        ("http://localhost:3128", "http://10.0.2.2:3128"),
        ("http://[::1]:3128", "http://10.0.2.2:3128"),
        ("http://user:secret@127.0.0.1:3128", "http://user:secret@10.0.2.2:3128"),
        ("http://proxy.corp:3128", "http://proxy.corp:3128"),
        ("http://10.1.1.1:3128", "http://10.1.1.1:3128"),
    ],
)
def test_loopback_proxy_is_rewritten_to_the_gateway(host_value: str, guest_value: str) -> None:
    guest = for_guest(read_host_proxies({"http_proxy": host_value}), hostname="vm1")
    assert guest.http == guest_value


def test_guest_no_proxy_gains_local_addresses_once_in_order() -> None:
    host = ProxySettings(http="http://p:1", https="http://p:1", no_proxy=["corp", "localhost"])
    guest = for_guest(host, hostname="vm1", gateway="10.0.2.2", guest_ip="10.0.2.15")
    assert guest.no_proxy == ["corp", "localhost", "10.0.2.2", "127.0.0.1", "vm1", "10.0.2.15"]
    env = guest.as_env()
    assert env["no_proxy"] == env["NO_PROXY"] == "corp,localhost,10.0.2.2,127.0.0.1,vm1,10.0.2.15"
    assert env["https_proxy"] == env["HTTPS_PROXY"] == "http://p:1"


def test_guest_of_empty_settings_stays_empty() -> None:
    assert for_guest(ProxySettings(), hostname="vm1").is_empty()


def test_describe_says_what_the_guest_got_without_passwords() -> None:
    from ccloudvm.guest.proxy import ProxySettings, describe

    got = describe(
        ProxySettings(http="http://me:secret@10.0.2.2:3128", no_proxy=["localhost", "10.0.2.2"]),
        propagated=True,
    )
    assert got.startswith("http_proxy=http://me:***@10.0.2.2:3128 no_proxy=localhost,10.0.2.2")
    assert "secret" not in got and "/etc/environment" in got and "apt" in got
    assert describe(ProxySettings(), propagated=True).startswith("none")
    assert "--no-proxy-propagation" in describe(
        ProxySettings(http="http://p:3128"), propagated=False
    )
