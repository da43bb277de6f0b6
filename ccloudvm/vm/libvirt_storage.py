"""What a domain on another host needs of ours, put there: the image (and its kernel and
initrd), the instance's seed and its disk, as volumes of a libvirt storage pool.

Files are uploaded once, under a content-addressed name (the first 20 hex digits of their
sha256, then their own name), so a second instance of the same image uploads nothing.
The instance's disk is a qcow2 volume backed by the image's volume, made on the remote
host by libvirt. The pool is `ccloudvm`: used as it is when it exists, else made (a
folder pool) under /var/lib/libvirt/images/ccloudvm for a /system URI.

The console of a remote domain is a pty there; ConsoleTap copies it, through a libvirt
stream, into the instance's local serial log, which readiness and `logs` read.
"""

from __future__ import annotations

import contextlib
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.images.download import sha256_file

POOL = "ccloudvm"
SYSTEM_POOL_DIR = "/var/lib/libvirt/images/ccloudvm"
_CHUNK = 1 << 20


def volume_name(path: Path) -> str:
    return f"{sha256_file(path)[:20]}-{path.name}"


def _error(libvirt: Any, exc: Exception, what: str, uri: str) -> CcloudvmError:
    full = str(exc.get_error_message() if hasattr(exc, "get_error_message") else exc).strip()
    message = full.splitlines()[0] if full else repr(exc)  # one line
    code = exc.get_error_code() if hasattr(exc, "get_error_code") else None
    if code in (libvirt.VIR_ERR_OPERATION_DENIED, libvirt.VIR_ERR_AUTH_FAILED) or (
        "ermission denied" in full
    ):
        return CcloudvmError(
            f"libvirt at {uri} does not allow us to {what}: {message}",
            hint="connect as a user the remote libvirt lets manage storage (root, or the "
            "libvirt group there)",
        )
    return CcloudvmError(f"libvirt at {uri} could not {what}: {message}")


def pool(libvirt: Any, conn: Any, uri: str) -> Any:
    """The `ccloudvm` pool on the connection's host, active; made for a /system URI."""
    try:
        found = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise _error(libvirt, exc, "look up its storage pools", uri) from None
        found = None
    made = None
    try:
        if found is None:
            if urlsplit(uri).path.rstrip("/") != "/system":
                raise UsageError(
                    f"libvirt at {uri} has no storage pool {POOL!r} for ccloudvm's images",
                    hint=f"make one there: virsh pool-define-as {POOL} dir --target DIR && "
                    f"virsh pool-build {POOL} && virsh pool-start {POOL}",
                )
            xml = (
                f"<pool type='dir'><name>{POOL}</name>"
                f"<target><path>{SYSTEM_POOL_DIR}</path></target></pool>"
            )
            found = conn.storagePoolDefineXML(xml, 0)
            made = found
            found.build(0)
            found.setAutostart(1)
        if not found.isActive():
            found.create(0)
        found.refresh(0)
    except libvirt.libvirtError as exc:
        if made is not None:  # never leave a pool defined that cannot start
            with contextlib.suppress(Exception):
                made.undefine()
        raise _error(libvirt, exc, f"make its storage pool {POOL!r}", uri) from None
    return found


def _lookup(libvirt: Any, store: Any, name: str) -> Any | None:
    try:
        return store.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def _volume_xml(name: str, size: int, fmt: str, backing: str = "") -> str:
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(size)
    if not backing:
        ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    ET.SubElement(ET.SubElement(volume, "target"), "format", type=fmt)
    if backing:
        store = ET.SubElement(volume, "backingStore")
        ET.SubElement(store, "path").text = backing
        ET.SubElement(store, "format", type="qcow2")
    return ET.tostring(volume, encoding="unicode")


def _check_room(store: Any, size: int, uri: str) -> None:
    available = store.info()[3]
    if available < size:
        raise CcloudvmError(
            f"the storage pool {POOL!r} at {uri} is full: {size >> 20} MiB needed, "
            f"{available >> 20} MiB free",
            hint=f"free some space there (virsh vol-list {POOL}; virsh vol-delete VOLUME "
            f"--pool {POOL})",
        )


def upload(libvirt: Any, conn: Any, store: Any, path: Path, uri: str) -> str:
    """The remote path of `path`'s content, uploaded first unless it is there already."""
    name = volume_name(path)
    try:
        found = _lookup(libvirt, store, name)
        if found is not None and _lookup(libvirt, store, done_marker(name)) is not None:
            return str(found.path())
        if found is not None:  # an upload that never finished (its process was killed)
            found.delete(0)
        size = path.stat().st_size
        _check_room(store, size, uri)
        ui.info(f"uploading {path.name} ({size / 2**20:.1f} MiB) to {urlsplit(uri).hostname}")
        volume = store.createXML(_volume_xml(name, size, "raw"), 0)
    except libvirt.libvirtError as exc:
        raise _error(libvirt, exc, f"make a volume for {path.name}", uri) from None
    stream = conn.newStream(0)
    try:
        volume.upload(stream, 0, size, 0)
        with path.open("rb") as source:
            stream.sendAll(lambda _stream, nbytes, src: src.read(min(nbytes, _CHUNK)), source)
        stream.finish()
        # What "this volume is complete" means: a process killed mid-upload made none.
        store.createXML(_volume_xml(done_marker(name), 0, "raw"), 0)
    except BaseException as exc:
        # Never leave a partial upload under a name that says it holds this content.
        _abort(stream)
        _delete(volume)
        if isinstance(exc, libvirt.libvirtError):
            raise _error(libvirt, exc, f"upload {path.name}", uri) from None
        raise
    return str(volume.path())


def done_marker(name: str) -> str:
    return f"{name}.complete"


def disk(libvirt: Any, store: Any, name: str, backing: str, size: int, uri: str) -> str:
    """The instance's disk volume (qcow2 over the image's volume), made if missing."""
    try:
        found = _lookup(libvirt, store, name)
        if found is None:
            found = store.createXML(_volume_xml(name, size, "qcow2", backing), 0)
        return str(found.path())
    except libvirt.libvirtError as exc:
        raise _error(libvirt, exc, f"make the disk {name}", uri) from None


def remove(libvirt: Any, store: Any, names: list[str]) -> None:
    for name in [*names, *map(done_marker, names)]:
        try:
            found = _lookup(libvirt, store, name)
        except libvirt.libvirtError:
            continue
        if found is not None:
            _delete(found)


def _abort(stream: Any) -> None:
    with contextlib.suppress(Exception):  # the stream may be gone already
        stream.abort()


def _delete(volume: Any) -> None:
    with contextlib.suppress(Exception):  # best effort: the upload's own error is what counts
        volume.delete(0)


class ConsoleTap:
    """Copies a domain's console into a local file until the domain or the process ends."""

    def __init__(
        self, libvirt: Any, conn: Any, domain: Any, log: Path, *, force: bool = True
    ) -> None:
        self._stream = conn.newStream(0)
        # A boot (create, start) takes the console over; `logs -f` must not take it from one.
        flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else 0
        domain.openConsole(None, self._stream, flags)
        self._log = log
        self._thread = threading.Thread(target=self._copy, name="console", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        with self._log.open("ab") as out:
            while True:
                try:
                    data = self._stream.recv(65536)
                except Exception:  # noqa: BLE001 - the domain stopped, or we did
                    return
                if not isinstance(data, bytes) or not data:
                    return
                out.write(data)
                out.flush()
