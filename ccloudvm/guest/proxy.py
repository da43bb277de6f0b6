"""Proxy settings: read once from the host, then rewritten for the guest's point of view.

The host's own downloads use the settings as they are. The guest cannot reach the host's
loopback, so a proxy on 127.0.0.1 is rewritten to the user-network gateway, and no_proxy
gains the addresses the guest must always reach directly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

from ccloudvm.core.errors import UsageError

GATEWAY = "10.0.2.2"
GUEST_IP = "10.0.2.15"

# Proxy values end up in shell lines, apt and systemd files inside the guest: anything
# that could break out of a quoted value there is refused rather than escaped four ways.
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'\\`$;]+")
_NO_PROXY_RE = re.compile(r"[A-Za-z0-9.*:/\[\]_-]+")


@dataclass(frozen=True)
class ProxySettings:
    http: str | None = None
    https: str | None = None
    no_proxy: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        """True when there is no proxy to use (no_proxy alone changes nothing)."""
        return not self.http and not self.https

    @property
    def no_proxy_text(self) -> str:
        return ",".join(self.no_proxy)

    def as_env(self) -> dict[str, str]:
        """The variables in both cases, as most programs read one or the other."""
        env: dict[str, str] = {}
        if self.is_empty():
            return env
        for name, value in (
            ("http_proxy", self.http),
            ("https_proxy", self.https),
            ("no_proxy", self.no_proxy_text),
        ):
            if value:
                env[name] = value
                env[name.upper()] = value
        return env


def _get(environ: Mapping[str, str], name: str) -> str | None:
    # The lower-case form wins: curl ignores upper-case HTTP_PROXY, and most tools follow.
    for key in (name, name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return value
    return None


def _normalize_url(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if "://" not in value:
        value = "http://" + value  # "proxy:3128" is common; apt and docker need a scheme
    if not _URL_RE.fullmatch(value) or not urlsplit(value).hostname:
        raise UsageError(
            f"{name}={value!r} is not a proxy URL ccloudvm can pass on",
            hint="use http://HOST:PORT and percent-encode special characters in passwords",
        )
    return value


def _split_no_proxy(value: str | None) -> list[str]:
    if not value:
        return []
    entries = [part.strip() for part in value.split(",")]
    for entry in entries:
        if entry and not _NO_PROXY_RE.fullmatch(entry):
            raise UsageError(
                f"no_proxy entry {entry!r} contains characters ccloudvm cannot pass on",
                hint="list host names, domains or addresses separated by commas",
            )
    return _dedupe(e for e in entries if e)


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def read_host_proxies(environ: Mapping[str, str]) -> ProxySettings:
    """http_proxy, https_proxy and no_proxy from `environ`; lower case wins over upper."""
    return ProxySettings(
        http=_normalize_url("http_proxy", _get(environ, "http_proxy")),
        https=_normalize_url("https_proxy", _get(environ, "https_proxy")),
        no_proxy=_split_no_proxy(_get(environ, "no_proxy")),
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rewrite_loopback(url: str | None, gateway: str) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname
    if host is None or not _is_loopback(host):
        return url
    netloc = gateway
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    return urlunsplit(parts._replace(netloc=netloc))


def for_guest(
    p: ProxySettings,
    *,
    gateway: str = GATEWAY,
    hostname: str,
    guest_ip: str = GUEST_IP,
) -> ProxySettings:
    """The settings as the guest must see them; empty settings stay empty."""
    if p.is_empty():
        return replace(p, no_proxy=list(p.no_proxy))
    return ProxySettings(
        http=_rewrite_loopback(p.http, gateway),
        https=_rewrite_loopback(p.https, gateway),
        no_proxy=_dedupe([*p.no_proxy, gateway, "127.0.0.1", "localhost", hostname, guest_ip]),
    )


# Where cloud-init/proxy.yaml.j2 writes the guest's proxies (said in create and status).
WRITTEN_TO = "/etc/environment, /etc/profile.d/ccloudvm-proxy.sh, apt, git, docker"


def describe(settings: ProxySettings, *, propagated: bool) -> str:
    """One line on what proxy propagation wrote into the guest, passwords hidden."""
    if not propagated:
        return "not propagated (--no-proxy-propagation)"
    if settings.is_empty():
        return "none (the host sets no http_proxy or https_proxy)"
    parts = [
        f"{name}={_hide_password(value)}"
        for name, value in (("http_proxy", settings.http), ("https_proxy", settings.https))
        if value
    ]
    if settings.no_proxy:
        parts.append(f"no_proxy={settings.no_proxy_text}")
    return " ".join(parts) + f" (in {WRITTEN_TO})"


def _hide_password(url: str) -> str:
    split = urlsplit(url)
    if split.password is None:
        return url
    netloc = split.netloc.replace(f":{split.password}@", ":***@", 1)
    return urlunsplit(split._replace(netloc=netloc))
