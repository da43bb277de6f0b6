"""What runs an instance's machine: QEMU started directly (the default), or libvirt.

One small interface, so the lifecycle in ccloudvm.instance.lifecycle reads the same for both: define
the machine (from the one MachineConfig), start it, ask whether it runs, stop it politely
(the ladder ends in quit), quit it at once, delete what the driver keeps of it. The
console log and the forwarded SSH endpoint are the instance's under both drivers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ccloudvm.core import pids as process
from ccloudvm.core.errors import UsageError
from ccloudvm.state.instance_state import InstanceFiles, InstanceState
from ccloudvm.vm import qemu
from ccloudvm.vm.accel import Acceleration
from ccloudvm.vm.machine import Machine

if TYPE_CHECKING:
    from ccloudvm.vm import warmboot

NAMES = ("qemu", "libvirt")
DEFAULT_LIBVIRT_URI = "qemu:///session"


class Driver(Protocol):
    def define(self, machine: qemu.MachineConfig, restore: warmboot.Snapshot | None = None) -> None:
        """Describe the machine for the next start (a QEMU command line, a domain)."""

    def start(self) -> None:
        """Start the machine defined last; LaunchFailed if it does not start."""

    def is_running(self) -> bool: ...

    def status(self) -> str:
        """running, paused, stopped, ... as the driver knows it."""

    def stop(self, timeout: float) -> None:
        """Shut the guest down politely; quit it if it does not within `timeout`."""

    def quit(self) -> None:
        """Stop the machine at once, as pulling the plug would."""

    def delete(self) -> None:
        """Quit, and forget whatever the driver keeps of the instance outside its folder."""

    @property
    def console_log(self) -> Path: ...

    def ssh_endpoint(self) -> tuple[str, int]: ...


def check_choice(driver: str, connect: str | None) -> str:
    """The URI to remember for `driver` ("" for qemu); `connect` only goes with libvirt."""
    if driver not in NAMES:
        raise UsageError(f"unknown driver {driver!r}", hint=f"use one of {', '.join(NAMES)}")
    if driver == "qemu":
        if connect:
            raise UsageError(
                "--connect goes with --driver libvirt", hint="add --driver libvirt, or drop it"
            )
        return ""
    return connect or DEFAULT_LIBVIRT_URI


def is_remote(inst: InstanceState) -> bool:
    """The instance's machine runs on another host (libvirt over SSH)."""
    if inst.driver != "libvirt":
        return False
    from ccloudvm.vm.libvirt_uri import is_remote as remote_uri

    return remote_uri(inst.connect)


def machine_running(files: InstanceFiles, inst: InstanceState) -> bool:
    """Whether the instance's machine runs: its pid file here, or its domain over there."""
    if is_remote(inst):
        return for_instance(files, inst).is_running()
    return process.running_pid(files.pidfile, files.dir) is not None


def remote_acceleration(files: InstanceFiles, inst: InstanceState) -> Acceleration:
    """What the host a remote instance runs on offers (its libvirt's capabilities)."""
    from ccloudvm.vm.libvirt_driver import LibvirtDriver

    return LibvirtDriver(files, inst).acceleration(inst.accel_mode)


def require_qemu(inst: InstanceState, what: str) -> None:
    """`what` (suspend, snapshots) works on QEMU's own monitor, which libvirt keeps."""
    if inst.driver != "qemu":
        raise UsageError(
            f"{what} of {inst.name!r} needs the QEMU driver; it runs under libvirt",
            hint="use 'ccloudvm stop' and 'start' with it, or create the instance with --driver qemu",
        )


def for_instance(files: InstanceFiles, inst: InstanceState) -> Driver:
    if inst.driver == "libvirt":
        from ccloudvm.vm.libvirt_driver import LibvirtDriver

        return LibvirtDriver(files, inst)
    return QemuDriver(files, inst)


class QemuDriver:
    """QEMU started by us (a vm.machine.Machine), daemonized, found by its pid file,
    driven over QMP."""

    def __init__(self, files: InstanceFiles, inst: InstanceState) -> None:
        self.files = files
        self.inst = inst
        self._machine = Machine.of_instance(files, inst.name)
        self._restore: warmboot.Snapshot | None = None

    def define(self, machine: qemu.MachineConfig, restore: warmboot.Snapshot | None = None) -> None:
        self._machine = Machine.configure(machine, incoming=restore is not None)
        self._restore = restore

    def start(self) -> None:
        self._machine.launch()
        self.files.qmp.parent.chmod(0o700)
        if self._restore is not None:
            from ccloudvm.vm import warmboot

            try:
                warmboot.restore(self.files.qmp, self._restore, self.inst.disk_gib * 2**30)
            except BaseException:
                self._machine.hard_shutdown()  # a QEMU waiting for a state that never came
                raise

    def is_running(self) -> bool:
        return self._machine.is_running()

    def status(self) -> str:
        if not self._machine.is_running():
            return "stopped"
        from ccloudvm.vm import qmp  # asyncio and qemu.qmp: only when QEMU is there to ask

        try:
            return qmp.query_status(self.files.qmp)
        except qmp.QMPUnavailable:
            return "unknown"

    def stop(self, timeout: float) -> None:
        self._machine.soft_shutdown(timeout)

    def quit(self) -> None:
        self._machine.hard_shutdown()

    def delete(self) -> None:
        self._machine.hard_shutdown()

    @property
    def console_log(self) -> Path:
        return Path(self.files.serial)

    def ssh_endpoint(self) -> tuple[str, int]:
        return self.inst.host_ip, self.inst.ssh_port


def force_off(files: InstanceFiles) -> None:
    """Quit the QEMU we started for the instance in `files`, if it runs (kill it if QMP
    does not answer). Needs no state: also for an instance whose state is damaged."""
    Machine.of_instance(files).hard_shutdown()
