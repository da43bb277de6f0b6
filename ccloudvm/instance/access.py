"""Reaching a running instance: an SSH connection, the system ssh command line, an
ssh_config stanza; all with the instance's pinned host key."""

from __future__ import annotations

import time
from pathlib import Path

from ccloudvm.core.errors import StateError
from ccloudvm.core.proc import require_tool
from ccloudvm.instance import boot
from ccloudvm.remote.ssh import SSHTarget
from ccloudvm.state.instance_state import InstanceFiles, InstanceState, files_of, load_state
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import drivers, libvirt_uri

JUMP_ALIAS = "ccloudvm-jump"  # the remote libvirt host, as the ssh config files name it


def require_running(files: InstanceFiles, inst: InstanceState) -> None:
    if not drivers.machine_running(files, inst):
        raise StateError(
            f"{inst.name!r} is not running", hint=f"start it with 'ccloudvm start {inst.name}'"
        )


def connect_target(state: StateDir, name: str) -> SSHTarget:
    """An SSH connection to a running instance."""
    inst = load_state(state, name)
    files = files_of(state, name)
    require_running(files, inst)
    return boot.ssh_target_for(state, inst, deadline=time.monotonic() + 20)


def ssh_argv(
    state: StateDir, name: str, command: list[str] | None = None, *, tty: bool = False
) -> list[str]:
    """The system ssh command line, host key pinned: an interactive session, or `command`
    (words ssh joins with spaces: quote them first) with a terminal if `tty`."""
    inst = load_state(state, name)
    files = files_of(state, name)
    require_running(files, inst)
    config = "/dev/null"
    jump = libvirt_uri.jump_host(inst.connect) if drivers.is_remote(inst) else None
    if jump is not None:  # ssh passes -F on to the ProxyJump hop, which reads this stanza
        config = str(files.dir / "jump.ssh_config")
        Path(config).write_text(jump.ssh_config(JUMP_ALIAS))
    argv = [
        require_tool("ssh"), "-F", config,
        "-i", str(state.private_key), "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={files.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "LogLevel=ERROR",
        "-p", str(inst.ssh_port), f"{inst.guest_user}@{inst.host_ip}",
    ]  # fmt: skip
    if jump is not None:
        argv[1:1] = ["-J", JUMP_ALIAS]
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
    ) + _jump_stanza(inst)


def _jump_stanza(inst: InstanceState) -> str:
    """For a VM on another host: through that host (ProxyJump), itself a Host of its own."""
    jump = libvirt_uri.jump_host(inst.connect) if drivers.is_remote(inst) else None
    if jump is None:
        return ""
    alias = f"{inst.name}-{JUMP_ALIAS}"
    return f"  ProxyJump {alias}\n" + jump.ssh_config(alias)
