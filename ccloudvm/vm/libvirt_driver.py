"""The libvirt driver: the instance's machine as a libvirt domain, driven through
libvirt's own API (libvirt-python) against a URI, qemu:///session by default.

The domain is built by ccloudvm.vm.libvirt_xml from the same MachineConfig as the QEMU
driver's command line, redefined before every start (sizes and the SSH port may have
changed), and marked in its metadata with the instance's folder: a domain of the same
name without that mark is someone else's and is never touched.

Locally (qemu:///session, qemu:///system) the domain names the instance's files by
their paths here. On another host (qemu+ssh://USER@HOST/system) they are volumes of a
storage pool there (ccloudvm.vm.libvirt_storage), uploaded once; the console comes back
through a libvirt stream, and SSH to the guest goes through that host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.core.proc import find_program
from ccloudvm.state.instance_state import InstanceFiles, InstanceState
from ccloudvm.vm import libvirt_storage, libvirt_uri, qemu
from ccloudvm.vm.accel import Acceleration
from ccloudvm.vm.libvirt_xml import domain_xml, owner_of
from ccloudvm.vm.machine import LaunchFailed

if TYPE_CHECKING:
    from ccloudvm.vm import warmboot


# The libvirt driver is optional: `ccloudvm setup` reports it and installs nothing for it.
LIBVIRT_INSTALL = (
    "run 'make libvirt' in ccloudvm's source, or 'apt-get install --no-install-recommends "
    "libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils libvirt-dev "
    "pkg-config gcc' and 'pip install ccloudvm[libvirt]'"
)


def libvirt_problem() -> str | None:
    """Why `create --driver libvirt` cannot work here, or None."""
    import importlib.util

    if importlib.util.find_spec("libvirt") is None:
        return "libvirt-python is not installed in ccloudvm's Python"
    if find_program("libvirtd") is None and find_program("virtqemud") is None:
        return "no libvirt daemon (libvirtd or virtqemud) is installed"
    return None


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise CcloudvmError(
            "the libvirt driver needs libvirt-python, which is not installed",
            hint=f"{LIBVIRT_INSTALL}; or use --driver qemu",
        ) from None
    # libvirt prints every error to stderr itself unless told not to; ours say it once.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    _run_event_loop(libvirt)
    return libvirt


_event_loop: list[threading.Thread] = []


def _run_event_loop(libvirt: Any) -> None:
    """libvirt's event loop in a thread, registered before any connection opens, as virsh
    does: without it a remote connection over libssh hangs on the first large reply (a
    domain's XML, measured here), and streams (the console) have nothing to run them."""
    if _event_loop:
        return
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while libvirt.virEventRunDefaultImpl() == 0:
            pass

    _event_loop.append(threading.Thread(target=run, name="libvirt-events", daemon=True))
    _event_loop[0].start()


def _message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    text = get() if callable(get) else None
    return str(text or exc).strip().splitlines()[0] if str(text or exc).strip() else repr(exc)


def connect(uri: str) -> Any:
    """An open connection to `uri`, or one line saying why not."""
    libvirt = _libvirt()
    libvirt_uri.check(uri)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        if _refused(libvirt, exc):
            raise CcloudvmError(
                f"libvirt at {uri} refused us: {_message(exc)}",
                hint="for a /system URI join that host's libvirt group (or use qemu:///session); "
                "over SSH, check the user and key the URI names",
            ) from None
        raise CcloudvmError(
            f"libvirt at {uri} does not answer: {_message(exc)}",
            hint="start the libvirt daemon (libvirtd or virtqemud), or give another --connect URI",
        ) from None
    if conn.getType() != "QEMU":
        raise UsageError(
            f"{uri} is libvirt's {conn.getType()} driver, not QEMU",
            hint="give a qemu:// URI, such as qemu:///session",
        )
    return conn


def _refused(libvirt: Any, exc: Any) -> bool:
    """A "no" (permissions, polkit, SSH authentication) rather than nobody there."""
    denied = {
        getattr(libvirt, name, None)
        for name in ("VIR_ERR_AUTH_FAILED", "VIR_ERR_AUTH_UNAVAILABLE",
                     "VIR_ERR_AUTH_CANCELLED", "VIR_ERR_OPERATION_DENIED")
    } - {None}  # fmt: skip
    text = _message(exc).lower()
    said = ("permission denied", "access denied", "failed to authenticate", "authentication failed")
    return exc.get_error_code() in denied or any(words in text for words in said)


def _lookup(conn: Any, name: str) -> Any | None:
    libvirt = _libvirt()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise CcloudvmError(f"libvirt could not look up {name!r}: {_message(exc)}") from None


def _foreign(uri: str, name: str) -> CcloudvmError:
    return UsageError(
        f"libvirt at {uri} already has a domain named {name!r} that ccloudvm did not make; "
        "it is left alone",
        hint="choose another --name (or remove that domain yourself with virsh undefine)",
    )


def check_create(uri: str, name: str, folder: Path) -> None:
    """Before a create makes anything: the URI answers, and no domain of that name is
    someone else's (one left by an earlier instance in the same folder is ours)."""
    conn = connect(uri)
    try:
        dom = _lookup(conn, name)
        if dom is not None and owner_of(dom.XMLDesc(0)) != str(folder):
            raise _foreign(uri, name)
    finally:
        conn.close()


def check_remote_request(uri: str, mounts: list[Any], drives: list[Any], ports: list[Any]) -> None:
    """A VM on another host cannot see this host's folders or files, nor listen here."""
    host = libvirt_uri.host_of(uri)
    if not host:
        return
    if mounts:
        raise UsageError(
            f"a VM on {host} cannot mount this host's folder {mounts[0].host_path}",
            hint="drop --mount (a workload's vm.mounts too: copy files in with 'ccloudvm copy'), "
            "or use a local URI",
        )
    if drives:
        raise UsageError(
            f"a VM on {host} cannot use this host's file {drives[0].path} as a drive",
            hint="drop --drive, or use a local URI",
        )
    if ports:
        raise UsageError(
            f"--port {ports[0].endpoint()} would listen on {host}, not here",
            hint=f"drop it, and forward through {host} yourself (ssh -L)",
        )


_STATES = {
    0: "unknown",
    1: "running",
    2: "running",  # blocked on I/O: still running
    3: "paused",
    4: "shutting down",
    5: "stopped",
    6: "crashed",
    7: "suspended",
}


class LibvirtDriver:
    def __init__(self, files: InstanceFiles, inst: InstanceState) -> None:
        self.files = files
        self.inst = inst
        self.uri = inst.connect or "qemu:///session"
        self._conn: Any = None
        self._xml = ""
        self.remote = libvirt_uri.is_remote(self.uri)
        self._console: libvirt_storage.ConsoleTap | None = None

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = connect(self.uri)
        return self._conn

    def _domain(self) -> Any | None:
        """Our domain, None if there is none; refuses a foreign one of the same name."""
        dom = _lookup(self._connection(), self.inst.name)
        if dom is not None and owner_of(dom.XMLDesc(0)) != str(self.files.dir):
            raise _foreign(self.uri, self.inst.name)
        return dom

    def _call(self, what: str, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except _libvirt().libvirtError as exc:
            raise CcloudvmError(
                f"libvirt could not {what} {self.inst.name!r}: {_message(exc)}"
            ) from None

    def define(self, machine: qemu.MachineConfig, restore: warmboot.Snapshot | None = None) -> None:
        if restore is not None:
            raise LaunchFailed("the libvirt driver does not start from warm-boot snapshots")
        dom = self._domain()
        backing = Path(self.inst.image.disk)
        if self.remote:
            machine, backing = self._put_remote(machine, backing)
        self._xml = domain_xml(
            machine,
            backing=backing,
            owner=str(self.files.dir),
            uuid=dom.UUIDString() if dom is not None else "",
            remote=self.remote,
        )
        (self.files.dir / "domain.xml").write_text(self._xml)  # what was defined, to read

    @property
    def _disk_volume(self) -> str:
        return f"{self.inst.name}-disk.qcow2"

    def _put_remote(
        self, machine: qemu.MachineConfig, image: Path
    ) -> tuple[qemu.MachineConfig, Path]:
        """The machine with its files as volumes on the remote host (uploaded if new)."""
        libvirt, conn = _libvirt(), self._connection()
        store = libvirt_storage.pool(libvirt, conn, self.uri)

        def put(path: Path) -> Path:
            return Path(libvirt_storage.upload(libvirt, conn, store, path, self.uri))

        remote_image = put(image)
        boot = machine.boot
        if boot is not None:
            initrd = put(boot.initrd) if boot.initrd is not None else None
            boot = qemu.DirectBoot(put(boot.kernel), initrd, boot.cmdline)
        size = self.inst.disk_gib << 30
        disk = libvirt_storage.disk(
            libvirt, store, self._disk_volume, str(remote_image), size, self.uri
        )
        changed = dataclasses.replace(machine, disk=Path(disk), seed=put(machine.seed), boot=boot)
        return changed, remote_image

    def start(self) -> None:
        libvirt = _libvirt()
        try:
            dom = self._connection().defineXML(self._xml)
            dom.create()
        except libvirt.libvirtError as exc:
            raise LaunchFailed(
                f"libvirt failed to start {self.inst.name!r}: {_message(exc)}",
                hint=f"the domain it was given is {self.files.dir / 'domain.xml'}",
            ) from None
        if not self.remote:
            return
        try:  # its console is a pty there: copied into our serial log
            self._tap(dom, force=True)
        except libvirt.libvirtError as exc:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()  # nobody could see it boot, nor know when it is ready
            raise LaunchFailed(
                f"libvirt started {self.inst.name!r} but could not open its console: "
                f"{_message(exc)}; it was stopped again",
                hint="the console is the domain's first serial port, a pty on that host",
            ) from None

    def _tap(self, dom: Any, *, force: bool = False) -> None:
        self._console = libvirt_storage.ConsoleTap(
            _libvirt(), self._connection(), dom, Path(self.files.serial), force=force
        )

    def tap_console(self) -> None:
        """Copy a running remote domain's console into the serial log from now on."""
        dom = self._domain()
        if self.remote and dom is not None and dom.isActive():
            self._call("open the console of", self._tap, dom)

    def acceleration(self, mode: str) -> Acceleration:
        """What the remote host offers: KVM when its libvirt can make kvm domains."""
        if mode in ("kvm", "tcg"):
            return Acceleration(mode, False, f"asked for with --accel {mode}")
        caps = self._call("ask about the host of", self._connection().getCapabilities)
        try:
            root = ET.fromstring(caps)
        except ET.ParseError:
            root = ET.Element("capabilities")
        kvm = any(
            guest.find("arch[@name='x86_64']/domain[@type='kvm']") is not None
            for guest in root.iter("guest")
        )
        host = libvirt_uri.host_of(self.uri)
        if kvm:
            return Acceleration("kvm", False, f"{host}'s libvirt offers KVM")
        return Acceleration("tcg", False, f"{host}'s libvirt offers no KVM")

    def is_running(self) -> bool:
        dom = self._domain()
        return dom is not None and bool(self._call("ask about", dom.isActive))

    def status(self) -> str:
        dom = self._domain()
        if dom is None:
            return "stopped"
        state, _reason = self._call("ask about", dom.state)
        return _STATES.get(state, "unknown")

    def stop(self, timeout: float) -> None:
        dom = self._domain()
        if dom is None or not self._call("ask about", dom.isActive):
            return
        self._call("shut down", dom.shutdown)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not dom.isActive():
                return
            time.sleep(0.2)
        ui.warn(f"{self.inst.name} did not power off within {timeout:.0f} s; destroying it")
        self.quit()

    def quit(self) -> None:
        dom = self._domain()
        if dom is not None and self._call("ask about", dom.isActive):
            self._call("destroy", dom.destroy)

    def delete(self) -> None:
        libvirt = _libvirt()
        dom = self._domain()
        if dom is not None:
            if dom.isActive():
                self._call("destroy", dom.destroy)
            flags = (
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            )
            self._call("undefine", dom.undefineFlags, flags)
        # Also with no domain (a create that failed after define): a disk left there would
        # be the next instance of this name's. The image's volumes stay, for its next one.
        if self.remote:
            self._remove_volumes(libvirt)

    def _remove_volumes(self, libvirt: Any) -> None:
        names = [self._disk_volume]
        if self.files.seed.exists():
            names.append(libvirt_storage.volume_name(self.files.seed))
        try:  # looked up, never made (a delete must not define a pool)
            store = self._connection().storagePoolLookupByName(libvirt_storage.POOL)
        except libvirt.libvirtError:
            return  # no pool: no volumes of ours
        libvirt_storage.remove(libvirt, store, names)

    @property
    def console_log(self) -> Path:
        return Path(self.files.serial)

    def ssh_endpoint(self) -> tuple[str, int]:
        return self.inst.host_ip, self.inst.ssh_port
