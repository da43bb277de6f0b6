"""What runs an instance's machine: QEMU started directly (the default), or libvirt.

One small interface, so the lifecycle in ccloudvm.instance.lifecycle reads the same for both: define
the machine (from the one MachineConfig), start it, ask whether it runs, stop it politely
(the ladder ends in quit), quit it at once, delete what the driver keeps of it. The
console log and the forwarded SSH endpoint are the instance's under both drivers.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ccloudvm.core import pids as process
from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.core.proc import require_tool, run
from ccloudvm.state.instance_state import InstanceFiles, InstanceState
from ccloudvm.vm import qemu

if TYPE_CHECKING:
    from ccloudvm.vm import warmboot

NAMES = ("qemu", "libvirt")
DEFAULT_LIBVIRT_URI = "qemu:///session"


class LaunchFailed(CcloudvmError):
    """The machine did not start at all (nothing runs)."""


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


def for_instance(files: InstanceFiles, inst: InstanceState) -> Driver:
    if inst.driver == "libvirt":
        from ccloudvm.vm.libvirt_driver import LibvirtDriver

        return LibvirtDriver(files, inst)
    return QemuDriver(files, inst)


class QemuDriver:
    """QEMU started by us, daemonized, found by its pid file, driven over QMP."""

    def __init__(self, files: InstanceFiles, inst: InstanceState) -> None:
        self.files = files
        self.inst = inst
        self._argv: list[str] = []
        self._restore: warmboot.Snapshot | None = None

    def define(self, machine: qemu.MachineConfig, restore: warmboot.Snapshot | None = None) -> None:
        self._argv = qemu.command_line(require_tool("qemu-system-x86_64"), machine)
        if restore is not None:
            self._argv += ["-incoming", "defer"]
        self._restore = restore

    def start(self) -> None:
        result = run(self._argv, check=False)
        if result.returncode != 0:
            reason = (result.stdout or "").strip().splitlines()
            raise LaunchFailed(
                f"QEMU failed to start {self.inst.name!r}: {reason[-1] if reason else 'no output'}",
                hint="run with --debug to see the QEMU command line",
            )
        self.files.qmp.parent.chmod(0o700)
        if self._restore is not None:
            from ccloudvm.vm import warmboot

            warmboot.restore(self.files.qmp, self._restore, self.inst.disk_gib * 2**30)

    def _pid(self) -> int | None:
        return process.running_pid(self.files.pidfile, self.files.dir)

    def is_running(self) -> bool:
        return self._pid() is not None

    def status(self) -> str:
        if self._pid() is None:
            return "stopped"
        from ccloudvm.vm import qmp  # asyncio and qemu.qmp: only when QEMU is there to ask

        try:
            return qmp.query_status(self.files.qmp)
        except qmp.QMPUnavailable:
            return "unknown"

    def stop(self, timeout: float) -> None:
        from ccloudvm.vm import qmp

        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(qmp.QMPUnavailable):
            qmp.system_powerdown(self.files.qmp)
        if not process.wait_gone(pid, self.files.dir, timeout):
            ui.warn(f"{self.inst.name} did not power off within {timeout:.0f} s; quitting QEMU")
            qmp.quit(self.files.qmp)
            if not process.wait_gone(pid, self.files.dir, 10):
                process.kill(pid, self.files.dir)
        self.files.qmp.unlink(missing_ok=True)

    def quit(self) -> None:
        force_off(self.files)

    def delete(self) -> None:
        force_off(self.files)

    @property
    def console_log(self) -> Path:
        return Path(self.files.serial)

    def ssh_endpoint(self) -> tuple[str, int]:
        return self.inst.host_ip, self.inst.ssh_port


def force_off(files: InstanceFiles) -> None:
    """Quit the QEMU we started for the instance in `files`, if it runs (kill it if QMP
    does not answer). Needs no state: also for an instance whose state is damaged."""
    pid = process.running_pid(files.pidfile, files.dir)
    if pid is None:
        return
    from ccloudvm.vm import qmp

    qmp.quit(files.qmp)
    if not process.wait_gone(pid, files.dir, 10):
        process.kill(pid, files.dir)
    files.qmp.unlink(missing_ok=True)
