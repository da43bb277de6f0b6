"""The "remote" libvirt host the remote-driver tests use (no VM): a libvirtd and an sshd
in a private mount namespace on this machine, reached over qemu+libssh with the test's own
key and known_hosts. It answers, defines and undefines a domain, hides the folders it is
given, and leaves no process, user or namespace behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e import libvirt_daemon
from tests.e2e.conftest import RemoteLibvirtFactory
from tests.e2e.libvirt_daemon import virsh

pytestmark = pytest.mark.e2e

DOMAIN = """<domain type='qemu'><name>e2e-remote-smoke</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"""


def _mount_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def test_remote_daemon(remote_libvirt_factory: RemoteLibvirtFactory, tmp_path: Path) -> None:
    secret = tmp_path / "client-only"
    secret.mkdir()
    (secret / "state.json").write_text("{}\n")
    sshd_user_before = libvirt_daemon.user_exists(libvirt_daemon.SSHD_USER)
    qemu_user_before = libvirt_daemon.user_exists(libvirt_daemon.QEMU_USER)
    had_dot_ssh = Path("/root/.ssh").exists()

    with remote_libvirt_factory([secret]) as remote:
        assert remote.uri.startswith(f"qemu+libssh://root@127.0.0.1:{remote.ssh_port}/system?")
        assert remote.hidden == [secret.resolve()]
        assert "libvirt" in virsh(remote.uri, "version").lower()
        definition = tmp_path / "domain.xml"
        definition.write_text(DOMAIN)
        virsh(remote.uri, "define", str(definition))
        assert "e2e-remote-smoke" in virsh(remote.uri, "list", "--all", "--name").split()
        virsh(remote.uri, "undefine", "e2e-remote-smoke")
        assert "e2e-remote-smoke" not in virsh(remote.uri, "list", "--all", "--name").split()

        # An SSH session is on the "remote host": the hidden folder is empty there, its
        # /run is the namespace's (the daemon's default socket), the rest is this machine.
        def ssh(*command: str) -> str:
            run = subprocess.run(  # noqa: S603 - fixed argv
                remote.ssh(*command), capture_output=True, text=True, timeout=60, check=False
            )
            assert run.returncode == 0, run.stderr
            return run.stdout

        assert ssh("ls", "-A", str(secret)) == ""
        assert (secret / "state.json").exists()  # still there for the client
        ssh("test", "-S", "/run/libvirt/libvirt-sock")
        namespace = ssh("readlink", "/proc/self/ns/mnt").strip()
        assert namespace != _mount_namespace(os.getpid())
        assert libvirt_daemon.user_exists(libvirt_daemon.SSHD_USER)
        marker = str(remote.key.parent).encode()

    # Nothing of it is left: no process in its namespace or naming its folder, no user.
    assert libvirt_daemon.leftovers(None, marker) == []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert _mount_namespace(int(proc.name)) != namespace, proc.name
            except OSError:
                continue
    assert libvirt_daemon.user_exists(libvirt_daemon.SSHD_USER) == sshd_user_before
    assert libvirt_daemon.user_exists(libvirt_daemon.QEMU_USER) == qemu_user_before
    assert Path("/root/.ssh").exists() == had_dot_ssh  # root's known_hosts untouched
