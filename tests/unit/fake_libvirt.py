"""A fake libvirt module for the libvirt driver's tests: it stands for libvirt-python and
the daemon behind it (the outside world), nothing else. Domains, storage pools, volumes
and streams keep what they were given, so a test can look at what the driver did.

The constants are libvirt's own values; the stream's sendAll is libvirt-python's own
loop (a handler called with its buffer size until it returns nothing, the stream aborted
if the handler raises)."""

from __future__ import annotations

import contextlib
import sys
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest

VIR_ERR_INTERNAL = 1
VIR_ERR_OPERATION_DENIED = 29
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_AUTH_FAILED = 45
VIR_ERR_NO_STORAGE_POOL = 49
VIR_ERR_NO_STORAGE_VOL = 50
STREAM_BUF_SIZE = 262144  # libvirt.virStorageVol.streamBufSize


class FakeLibvirtError(Exception):
    def __init__(self, message: str, code: int = VIR_ERR_INTERNAL) -> None:
        super().__init__(message)
        self._message = message
        self._code = code

    def get_error_code(self) -> int:
        return self._code

    def get_error_message(self) -> str:
        return self._message


class _Failing:
    """fail[method] = error: that method raises it."""

    def __init__(self) -> None:
        self.fail: dict[str, BaseException] = {}
        self.calls: list[tuple[Any, ...]] = []

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]


class FakeStream(_Failing):
    """A libvirt stream: an upload's bytes land in `sent` (and in the volume it was given
    to); a console's come from `incoming`, then EOF (b"") or `end` raised."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.volume: FakeVolume | None = None
        self.incoming: list[bytes] = []
        self.end: BaseException | None = None
        self.finished = False
        self.aborted = False
        self.fail_after: int | None = None  # send() fails once this many bytes were sent

    def send(self, data: bytes) -> int:
        self._maybe_fail("send")
        if self.fail_after is not None and len(self.sent) + len(data) > self.fail_after:
            raise FakeLibvirtError("stream had I/O failure: Connection reset by peer")
        self.sent += data
        if self.volume is not None:
            self.volume.data += data
        return len(data)

    def sendAll(self, handler: Callable[[Any, int, Any], bytes], opaque: Any) -> None:  # noqa: N802
        while True:  # libvirt-python's own loop
            try:
                got = handler(self, STREAM_BUF_SIZE, opaque)
            except BaseException:
                with contextlib.suppress(Exception):  # as libvirt-python does
                    self.abort()
                raise
            if not got:
                break
            self.send(got)

    def recv(self, nbytes: int) -> bytes:
        self.calls.append(("recv", nbytes))
        if self.incoming:
            return self.incoming.pop(0)[:nbytes]
        if self.end is not None:
            raise self.end
        return b""

    def finish(self) -> int:
        self._maybe_fail("finish")
        self.finished = True
        return 0

    def abort(self) -> int:
        self.aborted = True
        self._maybe_fail("abort")
        return 0


class FakeVolume(_Failing):
    def __init__(self, pool: FakePool, xml: str) -> None:
        super().__init__()
        self.pool = pool
        self.xml = xml
        self.name = ET.fromstring(xml).findtext("name") or ""
        self.data = bytearray()
        self.deleted = False

    def path(self) -> str:
        return f"{self.pool.target}/{self.name}"

    def upload(self, stream: FakeStream, offset: int, length: int, flags: int) -> int:
        self.calls.append(("upload", offset, length, flags))
        self._maybe_fail("upload")
        stream.volume = self
        return 0

    def delete(self, flags: int) -> int:
        self.calls.append(("delete", flags))
        self._maybe_fail("delete")
        self.deleted = True
        self.pool.volumes.pop(self.name, None)
        return 0


class FakePool(_Failing):
    def __init__(self, xml: str, *, active: bool = True, available: int = 100 << 30) -> None:
        super().__init__()
        self.xml = xml
        self.target = ET.fromstring(xml).findtext("target/path") or "/pool"
        self.active = active
        self.available = available
        self.autostart = False
        self.volumes: dict[str, FakeVolume] = {}
        self.lookup_error: FakeLibvirtError | None = None

    def isActive(self) -> int:  # noqa: N802 - libvirt's name
        return int(self.active)

    def build(self, flags: int) -> int:
        self.calls.append(("build", flags))
        self._maybe_fail("build")
        return 0

    def create(self, flags: int) -> int:
        self.calls.append(("create", flags))
        self._maybe_fail("create")
        self.active = True
        return 0

    def setAutostart(self, autostart: int) -> int:  # noqa: N802 - libvirt's name
        self.autostart = bool(autostart)
        return 0

    def undefine(self) -> int:
        self.calls.append(("undefine",))
        self.undefined = True
        return 0

    def refresh(self, flags: int) -> int:
        self.calls.append(("refresh", flags))
        self._maybe_fail("refresh")
        return 0

    def info(self) -> list[int]:
        return [2, 200 << 30, (200 << 30) - self.available, self.available]

    def storageVolLookupByName(self, name: str) -> FakeVolume:  # noqa: N802 - libvirt's name
        if self.lookup_error is not None:
            raise self.lookup_error
        if name not in self.volumes:
            raise FakeLibvirtError(
                f"Storage volume not found: no storage vol with matching name '{name}'",
                VIR_ERR_NO_STORAGE_VOL,
            )
        return self.volumes[name]

    def createXML(self, xml: str, flags: int) -> FakeVolume:  # noqa: N802 - libvirt's name
        self.calls.append(("createXML", xml, flags))
        self._maybe_fail("createXML")
        volume = FakeVolume(self, xml)
        self.volumes[volume.name] = volume
        return volume


def pool_xml(name: str = "ccloudvm", target: str = "/srv/pool") -> str:
    return f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target></pool>"


class FakeDomain(_Failing):
    def __init__(self, xml: str, *, active: bool = False, state: int = 5) -> None:
        super().__init__()
        self.xml = xml
        self.active = active
        self.state_code = state
        self.stays_on = False
        self.console: FakeStream | None = None

    def XMLDesc(self, flags: int) -> str:  # noqa: N802 - libvirt's name
        return self.xml

    def UUIDString(self) -> str:  # noqa: N802 - libvirt's name
        return "6b1c7c5e-0f5d-4a8e-9f43-3f1f1c2b9a10"

    def isActive(self) -> int:  # noqa: N802 - libvirt's name
        self.calls.append(("isActive",))
        self._maybe_fail("isActive")
        return int(self.active)

    def state(self) -> list[int]:
        self._maybe_fail("state")
        return [self.state_code, 0]

    def create(self) -> int:
        self.calls.append(("create",))
        self._maybe_fail("create")
        self.active = True
        return 0

    def shutdown(self) -> int:
        self.calls.append(("shutdown",))
        self._maybe_fail("shutdown")
        if not self.stays_on:
            self.active = False
        return 0

    def destroy(self) -> int:
        self.calls.append(("destroy",))
        self._maybe_fail("destroy")
        self.active = False
        return 0

    def undefineFlags(self, flags: int) -> int:  # noqa: N802 - libvirt's name
        self.calls.append(("undefineFlags", flags))
        self._maybe_fail("undefineFlags")
        return 0

    def openConsole(self, dev: str | None, stream: FakeStream, flags: int) -> int:  # noqa: N802
        self.calls.append(("openConsole", dev, flags))
        self._maybe_fail("openConsole")
        self.console = stream
        return 0


class FakeConnection:
    def __init__(self, kind: str = "QEMU") -> None:
        self.kind = kind
        self.domains: dict[str, FakeDomain] = {}
        self.defined: list[str] = []
        self.closed = False
        self.lookup_error: FakeLibvirtError | None = None
        self.define_error: FakeLibvirtError | None = None
        self.pools: dict[str, FakePool] = {}
        self.pool_lookup_error: FakeLibvirtError | None = None
        self.pool_define_error: FakeLibvirtError | None = None
        self.pools_defined: list[str] = []
        self.streams: list[FakeStream] = []
        self.next_stream: Callable[[FakeStream], None] | None = None  # to set up each new one

    def getType(self) -> str:  # noqa: N802 - libvirt's name
        return self.kind

    def lookupByName(self, name: str) -> FakeDomain:  # noqa: N802 - libvirt's name
        if self.lookup_error is not None:
            raise self.lookup_error
        if name not in self.domains:
            raise FakeLibvirtError(f"Domain not found: no domain with matching name '{name}'",
                                   VIR_ERR_NO_DOMAIN)  # fmt: skip
        return self.domains[name]

    def defineXML(self, xml: str) -> FakeDomain:  # noqa: N802 - libvirt's name
        if self.define_error is not None:
            raise self.define_error
        self.defined.append(xml)
        dom = self.domains.get("dev") or FakeDomain(xml)
        dom.xml = xml
        self.domains["dev"] = dom
        return dom

    def storagePoolLookupByName(self, name: str) -> FakePool:  # noqa: N802 - libvirt's name
        if self.pool_lookup_error is not None:
            raise self.pool_lookup_error
        if name not in self.pools:
            raise FakeLibvirtError(
                f"Storage pool not found: no storage pool with matching name '{name}'",
                VIR_ERR_NO_STORAGE_POOL,
            )
        return self.pools[name]

    def storagePoolDefineXML(self, xml: str, flags: int) -> FakePool:  # noqa: N802
        if self.pool_define_error is not None:
            raise self.pool_define_error
        self.pools_defined.append(xml)
        made = FakePool(xml, active=False)
        self.pools[ET.fromstring(xml).findtext("name") or ""] = made
        return made

    capabilities = "<capabilities><guest><arch name='x86_64'><domain type='qemu'/></arch></guest></capabilities>"

    def getCapabilities(self) -> str:  # noqa: N802 - libvirt's name
        return self.capabilities

    def newStream(self, flags: int) -> FakeStream:  # noqa: N802 - libvirt's name
        stream = FakeStream()
        if self.next_stream is not None:
            self.next_stream(stream)
        self.streams.append(stream)
        return stream

    def close(self) -> int:
        self.closed = True
        return 0


class FakeLibvirt(types.ModuleType):
    VIR_ERR_NO_DOMAIN = VIR_ERR_NO_DOMAIN
    VIR_ERR_NO_STORAGE_POOL = VIR_ERR_NO_STORAGE_POOL
    VIR_ERR_NO_STORAGE_VOL = VIR_ERR_NO_STORAGE_VOL
    VIR_ERR_OPERATION_DENIED = VIR_ERR_OPERATION_DENIED
    VIR_ERR_AUTH_FAILED = VIR_ERR_AUTH_FAILED
    VIR_DOMAIN_UNDEFINE_MANAGED_SAVE = 1
    VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA = 2
    VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA = 32
    VIR_DOMAIN_CONSOLE_FORCE = 1
    libvirtError = FakeLibvirtError  # noqa: N815 - libvirt's name

    def __init__(self, conn: FakeConnection) -> None:
        super().__init__("libvirt")
        self.conn = conn
        self.opened: list[str] = []
        self.open_error: FakeLibvirtError | None = None
        self.handlers: list[Any] = []

    def registerErrorHandler(self, handler: Any, ctx: Any) -> None:  # noqa: N802
        self.handlers.append(handler)

    def virEventRegisterDefaultImpl(self) -> int:  # noqa: N802 - libvirt's name
        self.event_impl = True
        return 0

    def virEventRunDefaultImpl(self) -> int:  # noqa: N802 - libvirt's name
        return -1  # the fake has no events: the loop thread ends at once

    def open(self, uri: str) -> FakeConnection:
        self.opened.append(uri)
        if self.open_error is not None:
            raise self.open_error
        return self.conn


def install(monkeypatch: pytest.MonkeyPatch) -> FakeLibvirt:
    """The fake, imported as `libvirt` for the rest of the test."""
    module = FakeLibvirt(FakeConnection())
    monkeypatch.setitem(sys.modules, "libvirt", module)
    return module
