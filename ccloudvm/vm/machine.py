"""One QEMU process: configured first, then launched; found by its pid file, driven over
its QMP socket, its console in its serial log (a file: a full pipe can hang QEMU).

`launch()` runs the command line built from a MachineConfig (vm/qemu.py); if QEMU does
not start, LaunchFailed carries the command line and says what QEMU said. Shutting down
is a ladder, and doing it twice does nothing more: `soft_shutdown` presses the ACPI power
button and waits for the guest, then quits QEMU; `hard_shutdown` starts at "quit"; both
kill QEMU if it does not go. As a context manager the machine is shut down when the
block ends, however it ends, so nothing outlives a failure:

    with Machine.configure(config) as machine:
        machine.launch()
        ...

The instances' QEMU driver (vm/drivers.py) and the warm-boot snapshot boot
(vm/warmboot.py) both run QEMU through it.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ccloudvm.core import pids as process
from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError
from ccloudvm.core.proc import require_tool, run
from ccloudvm.state.instance_state import InstanceFiles
from ccloudvm.vm import qemu

log = logging.getLogger(__name__)

QUIT_TIMEOUT = 10.0  # how long QEMU has to exit after "quit" before it is killed


class LaunchFailed(CcloudvmError):
    """The machine did not start at all (nothing runs). `reason` is QEMU's own message,
    `command` the command line that was run."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        reason: str = "",
        command: Sequence[str] = (),
    ) -> None:
        super().__init__(message, hint)
        self.reason = reason or message
        self.command = list(command)


def start_failure(output: str | None) -> str:
    """QEMU's reason for not starting, from what it printed: its last line (QEMU prints
    "qemu-system-x86_64: -drive ...: Could not open ..." and exits)."""
    lines = [line for line in (output or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


class Machine:
    """A QEMU process and the files that name it (see the module's description)."""

    def __init__(
        self,
        name: str,
        pidfile: Path,
        qmp_socket: Path,
        argv: Sequence[str] = (),
        serial_log: Path | None = None,
    ) -> None:
        self.name = name
        self.pidfile = pidfile
        self.qmp_socket = qmp_socket
        self.serial_log = serial_log
        self.argv = list(argv)
        # Whose QEMU it is: the one whose command line names files in this folder.
        self.marker = pidfile.parent

    @classmethod
    def configure(
        cls, config: qemu.MachineConfig, *, qemu_bin: str | None = None, incoming: bool = False
    ) -> Machine:
        """The machine `config` describes; `incoming`: it waits for a saved state to load
        (`-incoming defer`, see warmboot.restore)."""
        argv = qemu.command_line(qemu_bin or require_tool("qemu-system-x86_64"), config)
        if incoming:
            argv += ["-incoming", "defer"]
        return cls(config.name, config.pidfile, config.qmp_socket, argv, config.serial_log)

    @classmethod
    def of_instance(cls, files: InstanceFiles, name: str = "") -> Machine:
        """The instance's QEMU as its files name it, to ask or to stop (not to launch)."""
        return cls(name or files.dir.name, files.pidfile, files.qmp, serial_log=files.serial)

    # ------------------------------------------------------------ running

    def pid(self) -> int | None:
        return process.running_pid(self.pidfile, self.marker)

    def is_running(self) -> bool:
        return self.pid() is not None

    def launch(self) -> None:
        """Start QEMU (it daemonizes once it runs); LaunchFailed if it does not start."""
        if not self.argv:
            raise LaunchFailed(f"no command line to start {self.name!r} with")
        result = run(self.argv, check=False)
        if result.returncode != 0:
            reason = start_failure(result.stdout)
            log.debug("QEMU did not start: %s\n%s", shlex.join(self.argv), result.stdout)
            raise LaunchFailed(
                f"QEMU failed to start {self.name!r}: {reason}",
                hint="run with --debug to see the QEMU command line",
                reason=reason,
                command=self.argv,
            )

    # ------------------------------------------------------------ stopping

    def soft_shutdown(self, timeout: float) -> None:
        """Ask the guest to power off (ACPI); quit QEMU if it has not within `timeout`."""
        from ccloudvm.vm import qmp  # asyncio and qemu.qmp: only when QEMU is there to ask

        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(qmp.QMPUnavailable):
            qmp.system_powerdown(self.qmp_socket)
        if not process.wait_gone(pid, self.marker, timeout):
            ui.warn(f"{self.name} did not power off within {timeout:.0f} s; quitting QEMU")
            qmp.quit(self.qmp_socket)
        self.wait(QUIT_TIMEOUT)

    def hard_shutdown(self) -> None:
        """Stop QEMU at once, as pulling the plug would: "quit", then kill."""
        from ccloudvm.vm import qmp

        if self.pid() is None:
            return
        qmp.quit(self.qmp_socket)  # a monitor that does not answer: the kill below
        self.wait(QUIT_TIMEOUT)

    def wait(self, timeout: float) -> None:
        """Wait for QEMU to exit (after "quit", or a save that quits it); kill it if it
        has not within `timeout`; forget its monitor socket."""
        pid = self.pid()
        if pid is not None and not process.wait_gone(pid, self.marker, timeout):
            process.kill(pid, self.marker)
        self.qmp_socket.unlink(missing_ok=True)

    def __enter__(self) -> Machine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.hard_shutdown()
