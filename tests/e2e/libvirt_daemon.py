"""Libvirt daemons for the e2e tests, started by the test and removed with everything they
made; tests/e2e/conftest.py turns them into fixtures (`libvirt_uri`, `remote_libvirt`,
`remote_libvirt_factory`).

Each daemon is libvirtd run as root in the foreground, in a mount namespace of its own
where /run, /var/lib, /var/cache, /var/log and /etc/libvirt are empty tmpfs: everything it
writes (domain definitions, pools, logs, pid files) vanishes with it. Its QEMU runs as
root with no security driver. The QEMU driver of a root libvirtd needs its configured user
to exist (Debian's libvirt-daemon-system makes libvirt-qemu; we do not install that
package): made for the test if missing, and removed.

- `local_daemon`: its socket is in the test's folder, the only thing of it seen from
  outside (qemu:///system?socket=...).
- `remote_daemon`: a "remote host" on this machine. An sshd (Debian's, unpacked by
  `make test-sshd` into build/test-sshd/, never installed) runs in the same namespace, so
  an SSH session sees the daemon's default socket /run/libvirt/libvirt-sock and libvirt's
  virt-ssh-helper reaches it: the URI is qemu+libssh://root@127.0.0.1:PORT/system with the
  test's own key and known_hosts (the libssh transport takes both as URI parameters; the
  plain ssh one would read root's ~/.ssh). The client's own files (its state directory,
  the image cache, ...) are hidden from that host: each `hide` path is covered there by an
  empty read-only tmpfs. The sshd allows TCP forwarding, the way to a guest's SSH port
  forwarded by QEMU on the remote host's 127.77.x.y.

Teardown destroys and undefines every domain and pool, stops the daemon and sshd (their
process group), then kills whatever is left in the namespace or names the test's folder.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
SSHD_ROOT = REPO / "build" / "test-sshd"  # made by `make test-sshd`
SSHD = SSHD_ROOT / "usr" / "sbin" / "sshd"
SSHD_LIBS = SSHD_ROOT / "usr" / "lib" / "x86_64-linux-gnu"  # libwrap0, not on the host

QEMU_USER = "libvirt-qemu"  # Debian's compiled-in default for the QEMU driver
SSHD_USER = "sshd"  # sshd's privilege separation user; its chroot is /run/sshd
START_TIMEOUT = 30.0

# $1: the test's folder; $2: the unpacked sshd's root, or "" for none; then the paths to
# hide. Only argv, never a string built from them.
START_SCRIPT = """set -eu
root=$1
sshd_root=$2
shift 2
for d in "$@"; do
    mount -t tmpfs -o ro,mode=0755 ccloudvm-e2e-hidden "$d"
done
for d in /run /var/lib /var/cache /var/log /etc/libvirt; do
    mount -t tmpfs -o mode=0755 ccloudvm-e2e "$d"
done
# /var/lock is /run/lock: libvirt locks a console's pty there when a client opens it.
mkdir -m 1777 /run/lock
cp "$root/qemu.conf" /etc/libvirt/qemu.conf
if [ -n "$sshd_root" ]; then
    mkdir -m 0755 /run/sshd
    LD_LIBRARY_PATH="$sshd_root/usr/lib/x86_64-linux-gnu" \\
        "$sshd_root/usr/sbin/sshd" -D -e -f "$root/sshd_config" \\
        </dev/null >"$root/sshd.log" 2>&1 &
fi
exec libvirtd --config "$root/libvirtd.conf"
"""

QEMU_CONF = """user = "root"
group = "root"
swtpm_user = "root"
swtpm_group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
stdio_handler = "file"
"""

SSHD_CONFIG = """Port {port}
ListenAddress 127.0.0.1
HostKey {root}/hostkey
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
StrictModes no
PermitUserRC no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
"""


@dataclass(frozen=True)
class RemoteLibvirt:
    """A libvirt host reached over SSH: `uri` for libvirt, the rest for plain ssh."""

    uri: str  # qemu+libssh://root@127.0.0.1:PORT/system?keyfile=...&known_hosts=...
    ssh_port: int  # the sshd on 127.0.0.1, as root
    key: Path  # the client's private key (ed25519, no passphrase)
    known_hosts: Path  # holds the sshd's host key, as [127.0.0.1]:PORT
    hidden: list[Path]  # covered by an empty tmpfs on that host

    def ssh(self, *command: str) -> list[str]:
        """The argv of `ssh` running `command` (an argv, quoted for the remote shell) on
        that host, as root, with only the test's key and known_hosts."""
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.key), "-p", str(self.ssh_port),
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "root@127.0.0.1", "--", shlex.join(command),
        ]  # fmt: skip


def virsh(uri: str, *args: str, check: bool = True, prefix: Sequence[str] = ()) -> str:
    """`virsh -q -c uri args`; `prefix` runs it through another program (nsenter)."""
    result = subprocess.run(  # noqa: S603 - test harness, fixed argv
        [*prefix, "virsh", "-q", "-c", uri, *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: {result.stderr}")
    return result.stdout


def user_exists(name: str) -> bool:
    return (
        subprocess.run(["getent", "passwd", name], capture_output=True, check=False).returncode == 0
    )


def _group_exists(name: str) -> bool:
    return (
        subprocess.run(["getent", "group", name], capture_output=True, check=False).returncode == 0
    )


@contextlib.contextmanager
def system_user(name: str, home: str) -> Iterator[bool]:
    """A system user `name` for as long as the block runs: made if missing (yields True),
    then removed with the group made with it. One made meanwhile by another test is kept."""
    if user_exists(name):
        yield False
        return
    had_group = _group_exists(name)
    made = subprocess.run(  # noqa: S603 - fixed argv
        ["useradd", "--system", "--no-create-home", "--home-dir", home,
         "--shell", "/usr/sbin/nologin", *([] if had_group else ["--user-group"]), name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode == 9:  # "already exists": another test made it since
        yield False
        return
    if made.returncode != 0:
        raise AssertionError(f"useradd {name}: {made.stderr}")
    try:
        yield True
    finally:
        subprocess.run(["userdel", name], check=False)  # noqa: S603 - fixed argv
        if not had_group and _group_exists(name):
            subprocess.run(["groupdel", name], check=False)  # noqa: S603 - fixed argv


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _libvirtd_conf(root: Path, socket_dir: Path | None) -> str:
    conf = 'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
    conf += f'log_outputs = "3:file:{root / "libvirtd.log"}"\n'
    if socket_dir is not None:
        conf = f'unix_sock_dir = "{socket_dir}"\n' + conf
    return conf


def _logs(root: Path) -> str:
    parts = []
    for name in ("daemon.out", "sshd.log", "libvirtd.log"):
        path = root / name
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-40:]
            parts.append(f"--- {name} (end)\n" + "\n".join(lines))
    return "\n".join(parts)


def _namespace_of(pid: int) -> int | None:
    """An open descriptor of the mount namespace of `pid` (which keeps it, and so its
    inode, from being reused), or None if that process is gone or still in ours."""
    try:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    except OSError:
        return None
    ours = os.stat("/proc/self/ns/mnt")
    theirs = os.fstat(fd)
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        os.close(fd)
        return None
    return fd


def leftovers(namespace: int | None, marker: bytes) -> list[int]:
    """The live processes in `namespace` or whose command line contains `marker`."""
    ns = os.fstat(namespace) if namespace is not None else None
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in (os.getpid(), os.getppid()):
            continue
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (proc / "cmdline").read_bytes()
            in_ns = False
            if ns is not None:
                st = os.stat(proc / "ns" / "mnt")
                in_ns = (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino)
        except OSError:
            continue
        if in_ns or marker in cmdline:
            found.append(int(proc.name))
    return found


def _kill_leftovers(namespace: int | None, marker: bytes) -> None:
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = leftovers(namespace, marker)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = leftovers(namespace, marker)
        if not pids:
            return
    raise AssertionError(f"processes of the test's libvirt daemon survived SIGKILL: {pids}")


def _clean_daemon(uri: str, prefix: Sequence[str]) -> None:
    def domains() -> list[str]:
        return virsh(uri, "list", "--all", "--name", check=False, prefix=prefix).split()

    for name in domains():
        virsh(uri, "destroy", name, check=False, prefix=prefix)
        virsh(uri, "undefine", name, check=False, prefix=prefix)
    for name in domains():  # what a plain undefine refused: UEFI variables, snapshots
        virsh(uri, "undefine", name, "--nvram", "--managed-save", "--snapshots-metadata",
              "--checkpoints-metadata", check=False, prefix=prefix)  # fmt: skip
    for name in virsh(uri, "pool-list", "--all", "--name", check=False, prefix=prefix).split():
        virsh(uri, "pool-destroy", name, check=False, prefix=prefix)
        virsh(uri, "pool-undefine", name, check=False, prefix=prefix)


@contextlib.contextmanager
def _daemon(
    root: Path, probe_uri: str, sshd_root: Path | None, hide: Sequence[Path]
) -> Iterator[int]:
    """Runs start.sh in a new mount namespace; yields libvirtd's pid once `probe_uri`
    answers, and leaves nothing of it behind."""
    (root / "qemu.conf").write_text(QEMU_CONF)
    (root / "start.sh").write_text(START_SCRIPT)
    argv = ["unshare", "--mount", "--propagation", "private", "sh", str(root / "start.sh"),
            str(root), str(sshd_root or ""), *map(str, hide)]  # fmt: skip
    with (root / "daemon.out").open("w") as out:
        daemon = subprocess.Popen(  # noqa: S603 - fixed argv
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    namespace = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while subprocess.run(  # noqa: S603 - fixed argv
            ["virsh", "-c", probe_uri, "version"], capture_output=True, check=False
        ).returncode:
            assert daemon.poll() is None, f"libvirtd exited {daemon.returncode}\n{_logs(root)}"
            assert time.monotonic() < deadline, (
                f"libvirtd did not answer {probe_uri} within {START_TIMEOUT:.0f} s\n{_logs(root)}"
            )
            time.sleep(0.3)
        namespace = _namespace_of(daemon.pid)
        assert namespace is not None, "libvirtd is not in a mount namespace of its own"
        yield daemon.pid
    finally:
        if namespace is None and daemon.poll() is None:  # not reaped: its pid is still its
            namespace = _namespace_of(daemon.pid)
        try:
            if daemon.poll() is None:
                # Through the daemon's own socket, in the namespace (the remote one's
                # default socket is seen only there): sshd may be gone.
                prefix = ["nsenter", f"--target={daemon.pid}", "--mount", "--"]
                _clean_daemon(
                    _control_uri(root, sshd_root), prefix if namespace is not None else ()
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.pid, signal.SIGTERM)  # libvirtd and sshd
                try:
                    daemon.wait(20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(10)
            _kill_leftovers(namespace, str(root).encode())
        finally:
            if namespace is not None:
                os.close(namespace)


def _control_uri(root: Path, sshd_root: Path | None) -> str:
    """The URI of the daemon's own socket: in the test's folder, or (remote) the default
    one, reached with nsenter."""
    if sshd_root is None:
        return f"qemu:///system?socket={root / 'sock' / 'libvirt-sock'}"
    return "qemu:///system"


@contextlib.contextmanager
def local_daemon(root: Path) -> Iterator[str]:
    """A libvirtd whose socket is in `root` (made, empty or new); yields its URI."""
    (root / "sock").mkdir(parents=True)
    (root / "libvirtd.conf").write_text(_libvirtd_conf(root, root / "sock"))
    uri = _control_uri(root, None)
    with system_user(QEMU_USER, "/nonexistent"), _daemon(root, uri, None, ()):
        yield uri


def remote_missing() -> str | None:
    """Why `remote_daemon` cannot run here, or None."""
    if shutil.which("libvirtd") is None or shutil.which("virsh") is None:
        return "libvirt is not installed (make libvirt)"
    if not SSHD.exists():
        return f"no sshd for the remote libvirt tests in {SSHD_ROOT} (make test-sshd)"
    if shutil.which("ssh-keygen") is None or shutil.which("virt-ssh-helper") is None:
        return "ssh-keygen or virt-ssh-helper is missing (make setup libvirt)"
    return None


def _hidden_paths(root: Path, hide: Sequence[Path]) -> list[Path]:
    """`hide` resolved, without duplicates or paths under another of them; refused if
    one is missing, not a folder, or holds what the namespace needs."""
    hidden: list[Path] = []
    for path in sorted({Path(p).resolve() for p in hide}):
        if not path.is_dir():
            raise ValueError(f"cannot hide {path}: not an existing folder")
        for needed in (root.resolve(), SSHD_ROOT.resolve()):
            if needed == path or path in needed.parents:
                raise ValueError(f"cannot hide {path}: the test's daemon needs {needed}")
        if not any(other in path.parents for other in hidden):
            hidden.append(path)
    return hidden


def _keygen(path: Path) -> str:
    subprocess.run(  # noqa: S603 - fixed argv
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ccloudvm-e2e", "-f", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path.with_name(path.name + ".pub").read_text()


@contextlib.contextmanager
def remote_daemon(root: Path, hide: Sequence[Path] = ()) -> Iterator[RemoteLibvirt]:
    """A libvirtd and an sshd in one private mount namespace, its files in `root` (an
    empty folder); `hide`: existing folders that namespace sees as empty."""
    hidden = _hidden_paths(root, hide)
    port = free_port()
    host_key = _keygen(root / "hostkey")
    (root / "authorized_keys").write_text(_keygen(root / "client_key"))
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(host_key.split()[:2])}\n")
    (root / "sshd_config").write_text(SSHD_CONFIG.format(port=port, root=root))
    (root / "libvirtd.conf").write_text(_libvirtd_conf(root, None))
    params = f"keyfile={quote(str(root / 'client_key'))}&known_hosts={quote(str(known_hosts))}"
    uri = f"qemu+libssh://root@127.0.0.1:{port}/system?{params}&sshauth=privkey"
    with (
        system_user(QEMU_USER, "/nonexistent"),
        system_user(SSHD_USER, "/run/sshd"),
        _daemon(root, uri, SSHD_ROOT, hidden),
    ):
        yield RemoteLibvirt(uri, port, root / "client_key", known_hosts, hidden)
