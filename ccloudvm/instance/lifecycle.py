"""The instance lifecycle: start, stop, quit, delete, status (create: ccloudvm.instance.create).

Each public function takes the instance's lock, so two ccloudvm commands never work on
one instance at once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ccloudvm.core import ui
from ccloudvm.core.defaults import (
    BOOT_TIMEOUT,
    STOP_TIMEOUT,
)
from ccloudvm.core.errors import CcloudvmError, StateError, UsageError
from ccloudvm.core.proc import run
from ccloudvm.instance import boot
from ccloudvm.instance.checks import CreateRequest, _check_sizes
from ccloudvm.state.instance_state import (
    InstanceFiles,
    InstanceState,
    clear_creating,
    files_of,
    instance_lock,
    load_state,
    save_state,
    validate_name,
)
from ccloudvm.state.paths import StateDir, refuse_link
from ccloudvm.vm import drivers


def _disk_virtual_size_gib(disk: Path) -> float:
    info = json.loads(run(["qemu-img", "info", "--output=json", "-U", disk]).stdout)
    return int(info["virtual-size"]) / 2**30


# ---------------------------------------------------------------- launching


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class Resize:
    """New sizes for a stopped instance (None: keep)."""

    mem_mib: int | None = None
    cpus: int | None = None
    disk_gib: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.mem_mib, self.cpus, self.disk_gib))


def start(
    state: StateDir,
    name: str,
    timeout: float = BOOT_TIMEOUT,
    accel_mode: str | None = None,
    resize: Resize = Resize(),  # noqa: B008 - immutable
) -> InstanceState:
    """Boot a stopped instance; `accel_mode` (auto, kvm, tcg) replaces the saved choice,
    `resize` its sizes (kept for later boots; a disk only grows)."""
    files = files_of(state, name)
    load_state(state, name)  # a missing instance fails here, before a lock file is made
    with instance_lock(files):
        inst = load_state(state, name)  # as it is now, not before the lock
        if drivers.for_instance(files, inst).is_running():
            if resize:
                raise StateError(
                    f"{name} is running; its sizes change only while it is stopped",
                    hint=f"'ccloudvm restart {name}' with the same options stops and starts it",
                )
            ui.info(f"{name} is already running")
            return inst
        from ccloudvm.instance import suspend

        if suspend.is_suspended(files):
            if resize:
                raise StateError(
                    f"{name!r} is suspended; its sizes change only while it is stopped",
                    hint=f"'ccloudvm resume {name}' continues it as it is; 'ccloudvm stop "
                    f"{name}' discards its saved state, then start resizes it",
                )
            ui.info(f"{name} is suspended; resuming it")
            return suspend.resume_locked(state, files, inst)
        if resize:
            _resize(files, inst, resize)
        if accel_mode is not None:
            inst.accel_mode = accel_mode
        boot.launch(state, files, inst)
        boot.wait_ready(state, files, inst, timeout).close()
        clear_creating(files)  # a create that failed is fixed by a start that gets ready
        return inst


def _resize(files: InstanceFiles, inst: InstanceState, resize: Resize) -> None:
    """Apply new sizes to a stopped instance: checked first, then the disk grown, then
    the record saved (cloud-init grows the file system at the next boot)."""
    request = CreateRequest(
        workload=inst.workload, image=inst.image.name,
        mem_mib=resize.mem_mib or inst.mem_mib, cpus=resize.cpus or inst.cpus,
        disk_gib=resize.disk_gib or inst.disk_gib,
    )  # fmt: skip
    mem, cpus, disk = _check_sizes(request)
    if resize.disk_gib is not None and drivers.is_remote(inst):
        raise UsageError(
            f"{inst.name}'s disk is a volume on another host; --disk cannot grow it from here",
            hint="leave out --disk (--mem and --cpus work), or grow it there: virsh vol-resize",
        )
    current = _disk_virtual_size_gib(files.disk)
    if resize.disk_gib is not None and disk < current:
        raise UsageError(
            f"--disk {disk} GiB is smaller than {inst.name}'s disk ({current:.0f} GiB)",
            hint="a disk only grows: give a size of at least the current one",
        )
    if resize.disk_gib is not None and disk > current:
        run(["qemu-img", "resize", "-q", files.disk, f"{disk}G"])
    inst.mem_mib, inst.cpus, inst.disk_gib = mem, cpus, disk
    save_state(files, inst)
    ui.info(f"{inst.name}: {mem} MiB, {cpus} vCPUs, {disk} GiB disk")


def restart(
    state: StateDir,
    name: str,
    timeout: float = BOOT_TIMEOUT,
    resize: Resize = Resize(),  # noqa: B008 - immutable
) -> InstanceState:
    """Stop the instance politely (if it runs) and start it again, resized if asked."""
    stop(state, name)
    return start(state, name, timeout, resize=resize)


def stop(state: StateDir, name: str, timeout: float = STOP_TIMEOUT) -> None:
    """Shut the guest down politely; quit QEMU, then kill it, if the guest does not."""
    files = files_of(state, name)
    load_state(state, name)  # a missing instance fails here, before a lock file is made
    with instance_lock(files):
        inst = load_state(state, name)  # as it is now, not before the lock
        driver = drivers.for_instance(files, inst)
        running = driver.is_running()
        inst.desired = "stopped"
        save_state(files, inst)
        if not running:
            from ccloudvm.instance import suspend

            if suspend.discard(files):
                ui.info(f"{name} was suspended; its saved state is discarded, it is stopped")
                return
            ui.info(f"{name} is already stopped")
            return
        with ui.spinner(f"Stopping {name}"):
            driver.stop(timeout)
        ui.info(f"{name} stopped")


def quit_instance(state: StateDir, name: str) -> None:
    """Stop QEMU at once, as pulling the plug would."""
    files = files_of(state, name)
    load_state(state, name)  # a missing instance fails here, before a lock file is made
    with instance_lock(files):
        inst = load_state(state, name)  # as it is now, not before the lock
        inst.desired = "stopped"
        save_state(files, inst)
        drivers.for_instance(files, inst).quit()
        ui.info(f"{name} quit")


def _discard_machine(state: StateDir, files: InstanceFiles) -> None:
    """Stop the instance's machine at once and make its driver forget it (libvirt's
    domain), before its folder goes. A damaged or missing state: the QEMU we started."""
    try:
        inst = load_state(state, files.dir.name)
    except CcloudvmError:
        boot.force_off(files)
        return
    drivers.for_instance(files, inst).delete()


def delete(state: StateDir, name: str) -> None:
    validate_name(name)
    files = files_of(state, name)
    refuse_link(files.dir)
    if not files.dir.exists():
        raise UsageError(f"no instance named {name!r}", hint="'ccloudvm instances' lists them")
    with instance_lock(files):
        _discard_machine(state, files)
        shutil.rmtree(files.dir)
    ui.info(f"{name} deleted")
