"""What a libvirt URI says about where the VM runs: on this host, or on another one
reached over SSH (qemu+ssh://, qemu+libssh://, qemu+libssh2://), and how to get there.

Plain parsing, no libvirt import: `instances` and `status` use it to name the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from ccloudvm.core.errors import UsageError

if TYPE_CHECKING:
    from ccloudvm.remote.jump import JumpHost

SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")


def host_of(uri: str) -> str:
    """The host a URI names, "" for this one."""
    return urlsplit(uri).hostname or ""


def is_remote(uri: str) -> bool:
    return bool(host_of(uri))


def transport(uri: str) -> str:
    scheme = urlsplit(uri).scheme
    return scheme.split("+", 1)[1] if "+" in scheme else ""


def check(uri: str) -> None:
    """Refuse what the driver cannot use, in one line, before anything is made."""
    parts = urlsplit(uri)
    if not parts.scheme.startswith("qemu"):
        raise UsageError(
            f"{uri} is not a QEMU URI", hint="give a qemu:// URI, such as qemu:///session"
        )
    if is_remote(uri) and transport(uri) not in SSH_TRANSPORTS:
        # qemu://HOST/ with no transport is TLS, libvirt's default for a host name
        raise UsageError(
            f"libvirt on another host needs an SSH transport, not {transport(uri) or 'tls'!r} "
            f"({uri}): SSH to the guest goes through that host",
            hint="use qemu+ssh://USER@HOST/system (or qemu+libssh://)",
        )
    if parts.path.rstrip("/") not in ("/system", "/session"):
        raise UsageError(
            f"{uri} names neither /system nor /session", hint="end the URI in /system or /session"
        )


def jump_host(uri: str) -> JumpHost | None:
    """The SSH host between us and a remote URI's guests (None for a local URI), with the
    keyfile= and known_hosts= the URI gives libvirt itself."""
    if not is_remote(uri):
        return None
    from ccloudvm.remote.jump import DEFAULT_KNOWN_HOSTS, JumpHost  # paramiko: remote only

    parts = urlsplit(uri)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    known = query.get("known_hosts")
    key = query.get("keyfile")
    return JumpHost(
        host=parts.hostname or "",
        port=parts.port or 22,
        user=parts.username or "",
        key_path=Path(key) if key else None,
        known_hosts=Path(known) if known else DEFAULT_KNOWN_HOSTS,
    )
