"""Small value types shared by the CLI, workloads and instances: ports, mounts, drives."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ccloudvm.core.errors import UsageError

SECURITY_MODELS = ("passthrough", "mapped-xattr", "mapped-file", "none")


@dataclass(frozen=True)
class PortSpec:
    """A guest TCP port forwarded to a loopback address on the host.

    Without an address the forward listens on 127.0.0.1, so `localhost:HOST` (what a user
    types in a browser) reaches it; SSH keeps each instance's own address instead."""

    host: int
    guest: int
    address: str | None = None  # None: DEFAULT_PORT_ADDRESS

    @classmethod
    def parse(cls, text: str) -> PortSpec:
        """'[ADDR:]HOST:GUEST' or 'GUEST' (the same port on both sides); ADDR is a
        loopback address (127.x.x.x, or localhost)."""
        match = re.fullmatch(r"(?:(?:([^:\s]+):)?(\d{1,5}):)?(\d{1,5})", text.strip())
        if not match:
            raise UsageError(
                f"invalid port {text!r}",
                hint="write [ADDR:]HOST:GUEST, for example --port 8080:80",
            )
        guest = int(match.group(3))
        host = int(match.group(2)) if match.group(2) else guest
        for port in (host, guest):
            if not 1 <= port <= 65535:
                raise UsageError(f"port {port} in {text!r} is out of range (1-65535)")
        return cls(host=host, guest=guest, address=_loopback(match.group(1), text))

    @property
    def bind_address(self) -> str:
        return self.address or DEFAULT_PORT_ADDRESS

    def endpoint(self) -> str:
        """What a user connects to, and where it goes: '127.0.0.1:8080 -> 80'."""
        return f"{self.bind_address}:{self.host} -> {self.guest}"

    def __str__(self) -> str:
        prefix = f"{self.address}:" if self.address else ""
        return f"{prefix}{self.host}:{self.guest}"


DEFAULT_PORT_ADDRESS = "127.0.0.1"


def _loopback(address: str | None, text: str) -> str | None:
    if address is None:
        return None
    if address == "localhost":
        return DEFAULT_PORT_ADDRESS
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        parsed = None
    if parsed is None or not parsed.is_loopback:
        raise UsageError(
            f"{address!r} in --port {text!r} is not a loopback address",
            hint="forwarded ports listen on loopback only: use 127.0.0.1 (or leave ADDR out)",
        )
    return str(parsed)


@dataclass(frozen=True)
class MountSpec:
    """A host folder shared into the guest over 9p."""

    host_path: Path
    guest_path: str
    tag: str
    security_model: str | None = None  # None: chosen by the instance for the host user
    readonly: bool = False

    @classmethod
    def parse(cls, text: str, index: int = 0) -> MountSpec:
        """'HOST:GUEST[:ro]'; the host path may start with ~. The tag is derived."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise UsageError(
                f"invalid mount {text!r}",
                hint="write HOST_PATH:GUEST_PATH[:ro], for example --mount ~/src:/home/me/src",
            )
        readonly = False
        if len(parts) == 3:
            if parts[2] not in ("ro", "rw"):
                raise UsageError(
                    f"invalid mount option {parts[2]!r} in {text!r}", hint="use ro or rw"
                )
            readonly = parts[2] == "ro"
        guest = parts[1]
        if not guest.startswith("/"):
            raise UsageError(f"guest path {guest!r} in {text!r} must be absolute")
        return cls(
            host_path=Path(parts[0]).expanduser().absolute(),
            guest_path=guest,
            tag=f"mount{index}",
            readonly=readonly,
        )

    def validate(self) -> None:
        if not self.host_path.is_dir():
            raise UsageError(
                f"mount source {self.host_path} does not exist or is not a folder",
                hint="create it first or fix the path",
            )
        if self.security_model is not None and self.security_model not in SECURITY_MODELS:
            raise UsageError(
                f"unknown 9p security model {self.security_model!r}",
                hint="use one of " + ", ".join(SECURITY_MODELS),
            )


@dataclass(frozen=True)
class DriveSpec:
    """An extra disk attached to the VM: a workload's vm.drives entry, or a --drive."""

    path: Path
    format: str = "qcow2"  # "": not given (QEMU probes the file; libvirt takes raw)
    options: str = ""  # further QEMU -drive options, comma-separated, as written

    @classmethod
    def parse(cls, text: str) -> DriveSpec:
        """'PATH[,format=F][,option...]', where a comma in PATH is written ",," (QEMU's
        escape); the path may start with ~."""
        path, *rest = text.replace(",,", "\0").split(",")
        fmt, options = "", []
        for part in rest:
            key, _, value = part.partition("=")
            if key == "format" and value and not fmt:
                fmt = value
            else:
                options.append(part.replace("\0", ",,"))
        return cls(Path(path.replace("\0", ",")).expanduser(), fmt, ",".join(options))

    def __str__(self) -> str:
        """The form parse() reads (an instance's record keeps drives so)."""
        text = str(self.path).replace(",", ",,")
        text += f",format={self.format}" if self.format else ""
        return text + (f",{self.options}" if self.options else "")
