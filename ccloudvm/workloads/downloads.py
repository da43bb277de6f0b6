"""download() in provision steps: the files the host fetches and uploads before a step.

A step's template calls download(URL, DEST); the host fetches URL through its own proxy
into its cache and the step script installs it at DEST from the run's work folder. A
workload from a URL may not make the host fetch from itself or its private networks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ccloudvm.core.errors import UsageError

# The shell variable naming the per-run work folder on the target; provision.run_steps
# sets it at the top of every step script and uploads downloaded files into it.
WORKDIR_VAR = "CCLOUDVM_WORKDIR"


@dataclass(frozen=True)
class Download:
    """A file the host fetches (through its own proxy) and uploads before a step runs."""

    url: str
    cache_path: Path  # where the host keeps it, under <state>/cache/downloads
    staging_name: str  # its name inside the step's work folder on the target
    dest: str  # where the step installs it (may start with ~/)
    restricted: bool = False  # asked for by a workload from a URL: public addresses only


def refuse_private_url(url: str, where: str, *, action: str | None = None) -> None:
    """Refuse a URL whose host is (or resolves to) this host or a private network.

    Used for download() in workloads from a URL, so a workload from the internet cannot
    make the host fetch from its own loopback services or the local network and hand the
    result to the guest. A name that does not resolve here is let through: behind a proxy
    the host may not resolve outside names at all, and the fetch is checked again. The host
    is taken as both urllib and requests (urllib3) read it, so a URL they read differently
    (`http://127.0.0.1\\@93.184.216.34/`, which requests sends to 127.0.0.1) is refused.
    """
    for host in _hosts(url):
        for text in _addresses(host):
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if not address.is_global or address.is_multicast:
                raise UsageError(
                    f"{action or f'download({url!r})'} in {where}: a workload from a URL may "
                    f"not fetch from {text}, a loopback, link-local or private address",
                    hint="download the workload and run it as a local file if you trust it",
                )


def _hosts(url: str) -> set[str]:
    """The URL's host as urllib and as requests' parser see it, without a final dot."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    try:
        theirs = parse_url(str(url)).host or ""
    except LocationParseError:
        theirs = ""
    hosts = {urlsplit(str(url)).hostname or "", theirs}
    return {host.strip("[]").rstrip(".").lower() for host in hosts}


def _addresses(host: str) -> list[str]:
    """The addresses `host` stands for here (none when it does not resolve)."""
    try:
        return [str(ipaddress.ip_address(host.split("%", 1)[0]))]
    except ValueError:
        pass
    if host == "localhost" or host.endswith((".localhost", ".local")):
        return ["127.0.0.1"]
    try:
        return [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
    except (OSError, UnicodeError):
        return []


class Downloads:
    """Collects download() calls while one provision step renders."""

    def __init__(self, cache_dir: Path | None, where: str, *, restricted: bool = False) -> None:
        self.cache_dir = cache_dir
        self.where = where
        self.restricted = restricted
        self.items: list[Download] = []

    def __call__(self, url: str, dest: str, mode: str = "0644") -> str:
        if self.cache_dir is None:
            raise UsageError(
                f"download() can only be used in provision steps, not in {self.where}",
                hint="move the download into a provision step",
            )
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"download({url!r}) in {self.where}: only http(s) URLs can be fetched")
        if not re.fullmatch(r"0?[0-7]{3}", str(mode)):
            raise UsageError(f"download() in {self.where}: mode {mode!r} is not octal like 0644")
        if self.restricted:
            refuse_private_url(str(url), self.where)
        base = PurePosixPath(parts.path).name or "download"
        base = re.sub(r"[^A-Za-z0-9._-]", "_", base)
        digest = hashlib.sha256(str(url).encode()).hexdigest()[:16]
        item = Download(
            url=str(url),
            cache_path=self.cache_dir / f"{digest}-{base}",
            staging_name=f"dl-{digest}-{base}",
            dest=str(dest),
            restricted=self.restricted,
        )
        self.items.append(item)
        staged = f'"${WORKDIR_VAR}"/{item.staging_name}'
        return f"install -D -m {mode} {staged} {shell_path(item.dest)}"


def shell_path(path: str) -> str:
    """Quote a path for the shell, letting a leading ~/ mean the running user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)
