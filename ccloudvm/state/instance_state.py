"""An instance's saved description and its directory: names, files, addresses, the lock.

Everything about an instance lives in <state>/instances/NAME/; state.json is the
record of what it was created with, rewritten atomically.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ccloudvm.core import pids as process
from ccloudvm.core.errors import CcloudvmError, NotFoundError, StateError, UsageError
from ccloudvm.core.specs import MountSpec, PortSpec
from ccloudvm.state import records
from ccloudvm.state.paths import StateDir, file_lock, refuse_link

NAME_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
LOOPBACK_PREFIX = "127.77"  # each instance gets 127.77.X.Y, so forwarded ports never clash
DEFAULT_SSH_PORT = 10022

_ADJECTIVES = (
    "brave",
    "calm",
    "eager",
    "fond",
    "keen",
    "lucid",
    "merry",
    "nimble",
    "proud",
    "quiet",
    "swift",
    "witty",
)
_NOUNS = (
    "otter",
    "heron",
    "lynx",
    "badger",
    "falcon",
    "marten",
    "puffin",
    "wren",
    "stoat",
    "vole",
    "ibis",
    "newt",
)


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid instance name {name!r}",
            hint="use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit",
        )
    return name


def random_name(taken: set[str]) -> str:
    import random  # start-up: `instances` never needs it

    rng = random.SystemRandom()
    for _ in range(200):
        name = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        if name not in taken:
            return name
    return f"vm-{rng.randrange(16**6):06x}"


@dataclass
class ImageRef:
    name: str
    key: str
    disk: str
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    warm_boot: bool = False


@dataclass
class InstanceState:
    name: str
    workload: str
    image: ImageRef
    mem_mib: int
    cpus: int
    disk_gib: int
    host_ip: str
    ssh_port: int
    guest_user: str
    accel_mode: str = "auto"
    nested: bool = False
    ports: list[str] = field(default_factory=list)  # "host:guest"
    mounts: list[dict[str, Any]] = field(default_factory=list)
    drives: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    # "running" while we believe QEMU runs; "stopped" after stop/quit. A dead QEMU
    # while this says running means it died behind our back.
    desired: str = "running"
    provisioned: bool = False
    accel_used: str = ""
    # Warm-boot layout (ccloudvm.vm.warmboot): this many 9p slots, spares padded; and the
    # snapshot directory the disk overlay is backed by, when it was restored from one.
    mount_slots: int = 0
    warm_snapshot: str | None = None
    workload_ref: str = ""  # what the user named: a bundled name, a path or a URL
    propagate_proxy: bool = True
    proxy: str = ""  # what proxy propagation wrote into the guest, shown by status
    driver: str = "qemu"  # what runs the machine (ccloudvm.vm.drivers): qemu or libvirt
    connect: str = ""  # the libvirt URI, for the libvirt driver

    def port_specs(self) -> list[PortSpec]:
        return [PortSpec.parse(p) for p in self.ports]

    def mount_specs(self) -> list[MountSpec]:
        return [
            MountSpec(
                host_path=Path(m["host_path"]),
                guest_path=m["guest_path"],
                tag=m["tag"],
                security_model=m.get("security_model"),
                readonly=bool(m.get("readonly", False)),
            )
            for m in self.mounts
        ]

    @staticmethod
    def mount_record(mount: MountSpec) -> dict[str, Any]:
        return {
            "host_path": str(mount.host_path),
            "guest_path": mount.guest_path,
            "tag": mount.tag,
            "security_model": mount.security_model,
            "readonly": mount.readonly,
        }


class InstanceFiles:
    """The paths inside one instance's directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    state = property(lambda self: self.dir / "state.json")
    disk = property(lambda self: self.dir / "disk.qcow2")
    seed = property(lambda self: self.dir / "seed.iso")
    host_key = property(lambda self: self.dir / "ssh_host_ed25519_key")
    host_key_pub = property(lambda self: self.dir / "ssh_host_ed25519_key.pub")
    known_hosts = property(lambda self: self.dir / "known_hosts")
    qmp = property(lambda self: self.dir / "qmp.sock")
    serial = property(lambda self: self.dir / "serial.log")
    pidfile = property(lambda self: self.dir / "qemu.pid")
    lock = property(lambda self: self.dir / "lock")
    instance_id = property(lambda self: self.dir / "instance-id")
    creating = property(lambda self: self.dir / "creating")  # the creating process
    suspended = property(lambda self: self.dir / "suspended")  # ccloudvm.instance.suspend's state
    snapshots = property(lambda self: self.dir / "snapshots")  # ccloudvm.instance.snapshots


def mark_creating(files: InstanceFiles) -> None:
    """Record that this process is creating the instance, until clear_creating."""
    pid = os.getpid()
    files.creating.write_text(json.dumps({"pid": pid, "start": process.start_ticks(pid)}))


def clear_creating(files: InstanceFiles) -> None:
    files.creating.unlink(missing_ok=True)


def creation(files: InstanceFiles) -> str | None:
    """'creating' while the process that creates the instance runs, 'failed' when it is
    gone without finishing (killed, or the guest never got ready), None once created."""
    try:
        mark = json.loads(files.creating.read_text())
        pid, start = int(mark["pid"]), mark.get("start")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "failed"
    alive = start is not None and process.start_ticks(pid) == start
    return "creating" if alive else "failed"


def creating_names(state: StateDir) -> list[str]:
    """Instances being created (or whose create died) that have no state file yet."""
    if not state.instances.is_dir():
        return []
    return sorted(
        p.name
        for p in state.instances.iterdir()
        if not p.is_symlink() and (p / "creating").exists() and not (p / "state.json").exists()
    )


def files_of(state: StateDir, name: str) -> InstanceFiles:
    return InstanceFiles(state.instance_dir(name))


def save_state(files: InstanceFiles, inst: InstanceState) -> None:
    tmp = files.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(inst), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, files.state)


def load_state(state: StateDir, name: str) -> InstanceState:
    files = files_of(state, name)
    refuse_link(files.dir)  # not even read through a link out of the state directory
    try:
        raw = json.loads(files.state.read_text())
    except FileNotFoundError:
        raise NotFoundError(
            f"no instance named {name!r}", hint="'ccloudvm instances' lists them"
        ) from None
    except ValueError as exc:
        raise _damaged(files, name, f"not JSON: {exc}") from exc
    problems = records.problems(raw, InstanceState)
    if problems:
        raise _damaged(files, name, "; ".join(problems))
    inst = records.from_record(raw, InstanceState)
    try:
        inst.port_specs()
    except CcloudvmError as exc:
        raise _damaged(files, name, exc.message) from exc
    try:
        inst.mount_specs()
    except KeyError as exc:
        raise _damaged(files, name, f"a mount has no {exc}") from exc
    return inst


def _damaged(files: InstanceFiles, name: str, problem: str) -> StateError:
    return StateError(
        f"the state file {files.state} is damaged ({problem})",
        hint=f"'ccloudvm delete {name}' removes the instance",
    )


def instance_names(state: StateDir) -> list[str]:
    if not state.instances.is_dir():
        return []
    return sorted(
        p.name
        for p in state.instances.iterdir()
        if not p.is_symlink() and (p / "state.json").exists()
    )


def linked_entries(state: StateDir) -> list[str]:
    """The one-line error for each symbolic link where an instance folder should be: the
    listings leave them out (never followed) and name them with this."""
    if not state.instances.is_dir():
        return []
    found = []
    for entry in sorted(state.instances.iterdir()):
        try:
            refuse_link(entry)
        except StateError as exc:
            found.append(str(exc))
    return found


def all_states(state: StateDir) -> list[InstanceState]:
    result = []
    for name in instance_names(state):
        with contextlib.suppress(NotFoundError, StateError):
            result.append(load_state(state, name))
    return result


ADDRESS_FILE = "address"  # an instance folder's reservation of its loopback address


def reserve_host_ip(state: StateDir, files: InstanceFiles) -> str:
    """Choose a loopback address no other instance has or has reserved, and reserve it in
    `files.dir` (which must exist), under a state-wide lock: creates started together never
    get the same address (and so never race for the same SSH forward)."""
    with file_lock(state.run / "addresses.lock"):
        taken = {s.host_ip for s in all_states(state)}
        for folder in state.instances.iterdir():
            reservation = folder / ADDRESS_FILE
            if not folder.is_symlink() and reservation.is_file():
                with contextlib.suppress(OSError):
                    taken.add(reservation.read_text().strip())
        address = allocate_host_ip(taken)
        (files.dir / ADDRESS_FILE).write_text(address + "\n")
        return address


def allocate_host_ip(taken: set[str]) -> str:
    for third in range(256):
        for fourth in range(2, 255):
            address = f"{LOOPBACK_PREFIX}.{third}.{fourth}"
            if address not in taken:
                return address
    raise StateError("no free loopback address left for a new instance")


def port_free(host: str, port: int) -> bool:
    """Whether QEMU could listen on host:port. Like QEMU's own hostfwd listener, bind with
    SO_REUSEADDR: connections a stopped VM served linger in TIME_WAIT on the port for a
    minute, and they must not make a restart fail. A real listener still makes bind fail.
    Any failure (in use, a privileged port, a missing address) is False; check_port_allowed
    tells the failures that are not "in use" apart."""
    return _bind_error(host, port) is None


def _bind_error(host: str, port: int) -> OSError | None:
    import socket  # start-up: only port checks need it

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def unprivileged_port_start(
    sysctl: Path = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start"),
) -> int:
    """The lowest port an ordinary user may listen on (1024 unless the host changed it)."""
    try:
        return int(sysctl.read_text().strip())
    except (OSError, ValueError):
        return 1024


def check_port_allowed(host: str, port: int) -> None:
    """Raise if QEMU could never listen on host:port, whoever else is using it: a privileged
    port for a user without root, or an address this host does not have. A port that is
    merely in use passes; port_free says that, and the caller words the message."""
    error = _bind_error(host, port)
    if error is None or error.errno == errno.EADDRINUSE:
        return
    if error.errno == errno.EACCES:
        raise UsageError(
            f"host port {port} needs root",
            hint=f"pick a host port above {unprivileged_port_start() - 1}",
        )
    if error.errno == errno.EADDRNOTAVAIL:
        raise CcloudvmError(
            f"cannot listen on {host}: this host has no such address",
            hint="the loopback interface should carry all of 127.0.0.0/8 (see 'ip addr show lo')",
        )
    raise CcloudvmError(f"cannot listen on {host}:{port}: {error.strerror or error}")


def pick_ssh_port(host: str, preferred: int = DEFAULT_SSH_PORT) -> int:
    for port in range(preferred, preferred + 1000):
        if port_free(host, port):
            return port
    raise StateError(f"no free port for SSH on {host} between {preferred} and {preferred + 999}")


@contextlib.contextmanager
def instance_lock(files: InstanceFiles, timeout: float = 600.0) -> Iterator[None]:
    """Serialise commands on one instance across processes."""
    refuse_link(files.dir)
    files.dir.mkdir(parents=True, exist_ok=True)
    refuse_link(files.lock)
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise StateError(
                        f"another ccloudvm command is still working on {files.dir.name!r}",
                        hint="wait for it to finish and try again",
                    ) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)
