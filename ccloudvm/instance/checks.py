"""What a create asks for (CreateRequest) and the checks made before anything is made:
sizes, disk room, mounts, drives, forwarded ports."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

from ccloudvm.core import ui
from ccloudvm.core.defaults import BOOT_TIMEOUT, DEFAULT_DISK_GIB, MAX_DISK_GIB, MIN_MEM_MIB
from ccloudvm.core.errors import UsageError
from ccloudvm.core.hostinfo import HostUser, host_resources
from ccloudvm.core.specs import DEFAULT_PORT_ADDRESS, DriveSpec, MountSpec, PortSpec
from ccloudvm.state.instance_state import check_port_allowed, port_free
from ccloudvm.state.paths import StateDir


@dataclass
class CreateRequest:
    workload: str
    image: str
    name: str | None = None
    mem_mib: int | None = None
    cpus: int | None = None
    disk_gib: int | None = None
    ports: list[PortSpec] = field(default_factory=list)
    mounts: list[MountSpec] = field(default_factory=list)
    drives: list[DriveSpec] = field(default_factory=list)
    accel_mode: str = "auto"
    nested: bool = False
    user_data: dict[str, Any] = field(default_factory=dict)
    timeout: float = BOOT_TIMEOUT
    workload_ref: str = ""
    propagate_proxy: bool = True
    proxy: str = ""  # what proxy propagation wrote into the guest (proxy.describe)
    driver: str = "qemu"
    connect: str = ""  # libvirt URI (drivers.check_choice fills in the default)


# ---------------------------------------------------------------- validation


def _check_sizes(req: CreateRequest, kvm: bool = True) -> tuple[int, int, int]:
    """The sizes asked for, else the defaults for how the VM will run (`kvm` or TCG)."""
    host = host_resources()
    mem = req.mem_mib if req.mem_mib is not None else host.default_mem_mib(kvm)
    cpus = req.cpus if req.cpus is not None else host.default_cpus(kvm)
    disk = req.disk_gib if req.disk_gib is not None else DEFAULT_DISK_GIB
    if not MIN_MEM_MIB <= mem <= host.mem_mib:
        raise UsageError(
            f"--mem {mem} MiB is out of range",
            hint=f"use {MIN_MEM_MIB} to {host.mem_mib} MiB (this host has {host.mem_mib} MiB)",
        )
    if not 1 <= cpus <= host.cpus:
        raise UsageError(
            f"--cpus {cpus} is out of range",
            hint=f"use 1 to {host.cpus} (this host has {host.cpus} CPUs)",
        )
    if not 1 <= disk <= MAX_DISK_GIB:
        raise UsageError(f"--disk {disk} GiB is out of range", hint=f"use 1 to {MAX_DISK_GIB} GiB")
    return mem, cpus, disk


def _check_disk_room(state: StateDir, disk_gib: int) -> None:
    """The overlay grows as the guest writes: refuse a size the host's file system could
    never hold, warn when it is more than is free now."""
    usage = shutil.disk_usage(state.root)
    if disk_gib * 2**30 > usage.total:
        raise UsageError(
            f"--disk {disk_gib} GiB is larger than the file system holding {state.root} "
            f"({usage.total / 2**30:.0f} GiB)",
            hint="choose a smaller --disk, or set CCLOUDVM_HOME to a larger file system",
        )
    if disk_gib * 2**30 > usage.free:
        ui.warn(
            f"--disk {disk_gib} GiB is more than the {usage.free / 2**30:.0f} GiB free on "
            f"{state.root}; the VM stops if the host's disk fills up"
        )


def _check_mounts(mounts: list[MountSpec], user: HostUser) -> list[MountSpec]:
    resolved = []
    seen_tags: set[str] = set()
    seen_paths: set[str] = set()
    for mount in mounts:
        mount.validate()
        if mount.tag in seen_tags or mount.guest_path in seen_paths:
            raise UsageError(
                f"two mounts share the tag {mount.tag!r} or the guest path {mount.guest_path}"
            )
        seen_tags.add(mount.tag)
        seen_paths.add(mount.guest_path)
        # On a root host QEMU runs as root: mapped-xattr keeps the guest user's ownership in
        # xattrs and leaves the host's real owners alone. Otherwise QEMU runs as the user,
        # whose uid the guest user shares, so plain permissions already line up.
        model = mount.security_model or ("mapped-xattr" if user.is_root else "none")
        resolved.append(
            MountSpec(mount.host_path, mount.guest_path, mount.tag, model, mount.readonly)
        )
    return resolved


def _check_drives(drives: list[DriveSpec]) -> None:
    for drive in drives:
        if not drive.path.is_file():
            raise UsageError(
                f"drive {drive.path} does not exist",
                hint="give an existing disk image: --drive PATH,format=qcow2",
            )


def _check_ports(ports: list[PortSpec], host_ip: str) -> None:
    """Every forward can be bound: on 127.0.0.1 unless the port names its address. The SSH
    forward is on the instance's own address (`host_ip`), so it never clashes with these."""
    seen: set[tuple[str, int]] = set()
    for port in ports:
        where = (port.bind_address, port.host)
        if where in seen:
            raise UsageError(f"host port {port.bind_address}:{port.host} is forwarded twice")
        seen.add(where)
        check_port_allowed(port.bind_address, port.host)  # "needs root" is not "in use"
        if not port_free(port.bind_address, port.host):
            raise UsageError(
                f"port {port.host} on {port.bind_address} is already in use",
                hint=f"pick another host port (--port {_spare_port(port.host)}:{port.guest}) "
                f"or the instance's own address (--port {host_ip}:{port.host}:{port.guest})",
            )


def _spare_port(taken: int) -> int:
    for candidate in range(taken + 10000 if taken < 50000 else 20000, 65536):
        if port_free(DEFAULT_PORT_ADDRESS, candidate):
            return candidate
    return 18080
