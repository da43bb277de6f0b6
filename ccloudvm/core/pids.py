"""Finding and ending an instance's QEMU process by its pid file."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot): with the pid, it names one
    process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def is_qemu_of(pid: int, marker: Path) -> bool:
    """True if `pid` is alive and is the QEMU started for the instance whose files are in
    the folder `marker`: its command line names files in that folder (its -pidfile at
    least). The trailing slash keeps instance "dev" from claiming the QEMU of "dev2"."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline and f"{marker}/".encode() in cmdline


def running_pid(pidfile: Path, marker: Path) -> int | None:
    pid = read_pid(pidfile)
    if pid is not None and is_qemu_of(pid, marker):
        return pid
    return None


def wait_gone(pid: int, marker: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_qemu_of(pid, marker):
            return True
        time.sleep(0.1)
    return not is_qemu_of(pid, marker)


def kill(pid: int, marker: Path) -> None:
    """The last rung of the shutdown ladder: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not is_qemu_of(pid, marker):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(pid, marker, wait):
            return
