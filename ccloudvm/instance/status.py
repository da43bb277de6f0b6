"""What an instance is doing now, from its files and from QEMU itself.

Kept apart from ccloudvm.instance.lifecycle, and light to import, so that `instances` and `status`
start fast (issue 10): QMP (asyncio) is loaded only when a QEMU is there to ask.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ccloudvm.core import pids as process
from ccloudvm.state.instance_state import (
    InstanceFiles,
    InstanceState,
    creation,
    files_of,
    load_state,
)
from ccloudvm.state.paths import StateDir


@dataclass(frozen=True)
class InstanceStatus:
    """One instance as `status` and `instances` show it (as_dict: the fields in order)."""

    name: str
    state: str  # running, paused, stopped, crashed, suspended, creating, failed, ...
    pid: int | None
    workload: str
    image: str
    mem_mib: int
    cpus: int
    disk_gib: int
    accel: str
    driver: str
    boot: str  # how it first booted: from a warm-boot snapshot of its image, or cold
    ssh: str
    ports: list[str]
    mounts: list[str]
    proxy: str
    directory: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def status(state: StateDir, name: str) -> InstanceStatus:
    files = files_of(state, name)
    making = creation(files)
    if making is not None and not files.state.exists():
        return _early_status(name, making, files)  # still fetching the image, say
    inst = load_state(state, name)
    pid = process.running_pid(files.pidfile, files.dir)
    if making is not None:
        run_state = making  # a create that runs, or one that ended without a ready guest
    elif inst.driver == "libvirt" and _remote(inst.connect):
        run_state = _remote_state(files, inst)
    elif pid is None and (files.suspended / "suspend.json").is_file():
        run_state = "suspended"  # ccloudvm.instance.suspend: the running state saved, QEMU gone
    elif pid is None:
        run_state = "crashed" if inst.desired == "running" else "stopped"
    else:
        from ccloudvm.vm import drivers  # QMP (asyncio) or libvirt: only when there is a machine

        run_state = drivers.for_instance(files, inst).status()
    return InstanceStatus(
        name=inst.name,
        state=run_state,
        pid=pid,
        workload=inst.workload,
        image=inst.image.name,
        mem_mib=inst.mem_mib,
        cpus=inst.cpus,
        disk_gib=inst.disk_gib,
        accel=inst.accel_used,
        driver=f"libvirt {inst.connect}" if inst.driver == "libvirt" else inst.driver,
        boot="warm" if inst.warm_snapshot else "cold",
        ssh=f"{inst.guest_user}@{inst.host_ip}:{inst.ssh_port}",
        ports=[p.endpoint() for p in inst.port_specs()],
        mounts=[f"{m.host_path}->{m.guest_path}" for m in inst.mount_specs()],
        proxy=inst.proxy or "-",
        directory=str(files.dir),
    )


def _early_status(name: str, making: str, files: InstanceFiles) -> InstanceStatus:
    """The row of an instance whose create has not written its state yet."""
    return InstanceStatus(
        name=name, state=making, pid=None, workload="-", image="-", mem_mib=0, cpus=0,
        disk_gib=0, accel="", driver="-", boot="-", ssh="-", ports=[], mounts=[], proxy="-",
        directory=str(files.dir),
    )  # fmt: skip


def _remote(uri: str) -> bool:
    from ccloudvm.vm.libvirt_uri import is_remote

    return is_remote(uri)


def _remote_state(files: InstanceFiles, inst: InstanceState) -> str:
    """Its domain runs elsewhere: libvirt there knows its state, if that host answers."""
    import logging

    from ccloudvm.core.errors import CcloudvmError
    from ccloudvm.vm import drivers

    try:
        return drivers.for_instance(files, inst).status()
    except CcloudvmError as exc:
        logging.getLogger("ccloudvm.status").debug("%s: %s", inst.name, exc)
        return "unreachable"
