"""Reaching a running instance: an SSH connection, the system ssh command line, an
ssh_config stanza; all with the instance's pinned host key."""

from __future__ import annotations

import time

from ccloudvm.core import pids as process
from ccloudvm.core.errors import StateError
from ccloudvm.core.proc import require_tool
from ccloudvm.instance import boot
from ccloudvm.remote.ssh import SSHTarget
from ccloudvm.state.instance_state import InstanceFiles, files_of, load_state
from ccloudvm.state.paths import StateDir


def require_running(files: InstanceFiles, name: str) -> int:
    pid = process.running_pid(files.pidfile, files.dir)
    if pid is None:
        raise StateError(f"{name!r} is not running", hint=f"start it with 'ccloudvm start {name}'")
    return pid


def connect_target(state: StateDir, name: str) -> SSHTarget:
    """An SSH connection to a running instance."""
    inst = load_state(state, name)
    files = files_of(state, name)
    require_running(files, name)
    return boot.ssh_target_for(state, inst, deadline=time.monotonic() + 20)


def ssh_argv(
    state: StateDir, name: str, command: list[str] | None = None, *, tty: bool = False
) -> list[str]:
    """The system ssh command line, host key pinned: an interactive session, or `command`
    (words ssh joins with spaces: quote them first) with a terminal if `tty`."""
    inst = load_state(state, name)
    files = files_of(state, name)
    require_running(files, name)
    argv = [
        require_tool("ssh"), "-F", "/dev/null",
        "-i", str(state.private_key), "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={files.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "LogLevel=ERROR",
        "-p", str(inst.ssh_port), f"{inst.guest_user}@{inst.host_ip}",
    ]  # fmt: skip
    if tty:
        argv.insert(1, "-tt")  # asked for: a terminal even when stdin is not one
    elif command:
        argv.insert(1, "-T")
    if command:
        argv += ["--", *command]
    return argv


def ssh_config(state: StateDir, name: str) -> str:
    inst = load_state(state, name)
    files = files_of(state, name)
    return (
        f"Host {inst.name}\n"
        f"  HostName {inst.host_ip}\n"
        f"  Port {inst.ssh_port}\n"
        f"  User {inst.guest_user}\n"
        f"  IdentityFile {state.private_key}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {files.known_hosts}\n"
        "  StrictHostKeyChecking yes\n"
    )
