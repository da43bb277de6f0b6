"""Tests for the SSH target against a real SSH server started in the test.

The server is paramiko's own server side on 127.0.0.1 (no sshd to install, nothing left
listening): it authenticates one public key, runs exec requests with /bin/sh -c like
sshd does (separate stdout/stderr, exit status, the process killed when the client goes
away) and serves SFTP on the local file system, relative paths resolved against a home
folder. Everything it starts is stopped when the test ends.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import paramiko
import pytest
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)
from paramiko.sftp import SFTP_OK

from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.guest.keys import KeyPair, generate_ed25519, write_keypair
from ccloudvm.remote.ssh import (
    HostKeyMismatchError,
    SSHTarget,
    build_command,
    known_hosts_line,
    wait_for_ssh,
)

# -- a small SSH server ----------------------------------------------------------------


class _Handle(paramiko.SFTPHandle):
    filename: str
    readfile: IO[bytes]
    writefile: IO[bytes]

    def stat(self) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or 0)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        try:
            paramiko.SFTPServer.set_file_attr(self.filename, attr)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or 0)
        return SFTP_OK


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or 0)

    return wrapper


class _SFTP(paramiko.SFTPServerInterface):
    def __init__(self, server: paramiko.ServerInterface, home: Path) -> None:
        super().__init__(server)
        self.home = home

    def _real(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.home, path))

    def canonicalize(self, path: str) -> str:
        return self._real(path)

    @_errors
    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes]:
        real = self._real(path)
        result = []
        for name in os.listdir(real):
            attr = paramiko.SFTPAttributes.from_stat(os.lstat(os.path.join(real, name)))
            attr.filename = name
            result.append(attr)
        return result

    @_errors
    def stat(self, path: str) -> paramiko.SFTPAttributes:
        return paramiko.SFTPAttributes.from_stat(os.stat(self._real(path)))

    @_errors
    def lstat(self, path: str) -> paramiko.SFTPAttributes:
        return paramiko.SFTPAttributes.from_stat(os.lstat(self._real(path)))

    @_errors
    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> _Handle:
        real = self._real(path)
        mode = getattr(attr, "st_mode", None)
        fd = os.open(real, flags, 0o666 if mode is None else mode)
        if flags & os.O_WRONLY:
            fstr = "ab" if flags & os.O_APPEND else "wb"
        elif flags & os.O_RDWR:
            fstr = "a+b" if flags & os.O_APPEND else "r+b"
        else:
            fstr = "rb"
        handle = _Handle(flags)
        handle.filename = real
        handle.readfile = handle.writefile = os.fdopen(fd, fstr)
        return handle

    @_errors
    def remove(self, path: str) -> int:
        os.remove(self._real(path))
        return SFTP_OK

    @_errors
    def rename(self, oldpath: str, newpath: str) -> int:
        os.rename(self._real(oldpath), self._real(newpath))
        return SFTP_OK

    @_errors
    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        real = self._real(path)
        os.mkdir(real)
        if attr is not None:
            paramiko.SFTPServer.set_file_attr(real, attr)
        return SFTP_OK

    @_errors
    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return SFTP_OK

    @_errors
    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        paramiko.SFTPServer.set_file_attr(self._real(path), attr)
        return SFTP_OK

    @_errors
    def symlink(self, target_path: str, path: str) -> int:
        os.symlink(target_path, self._real(path))
        return SFTP_OK

    @_errors
    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))


class _Server(paramiko.ServerInterface):
    def __init__(self, owner: SSHTestServer) -> None:
        self.owner = owner

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.owner.user and key.get_base64() == self.owner.allowed_key_b64:
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        thread = threading.Thread(target=self.owner.execute, args=(channel, command), daemon=True)
        self.owner.threads.append(thread)
        thread.start()
        return True


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class SSHTestServer:
    def __init__(
        self,
        *,
        host_key: paramiko.PKey,
        user: str,
        allowed_key_b64: str,
        home: Path,
        env: dict[str, str],
        port: int = 0,
    ) -> None:
        self.host_key = host_key
        self.user = user
        self.allowed_key_b64 = allowed_key_b64
        self.home = home
        self.env = env
        self.commands: list[str] = []
        self.threads: list[threading.Thread] = []
        self._transports: list[paramiko.Transport] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(16)
        self._listener.settimeout(0.1)  # so the accept loop notices close()
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _SFTP, self.home)
            self._transports.append(transport)
            try:
                transport.start_server(event=threading.Event(), server=_Server(self))
            except paramiko.SSHException:
                transport.close()

    def execute(self, channel: paramiko.Channel, command: bytes) -> None:
        text = command.decode("utf-8")
        self.commands.append(text)
        proc = subprocess.Popen(  # noqa: S603 - the test server runs what the client sent
            ["/bin/sh", "-c", text],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.home,
            start_new_session=True,  # so the whole command can be killed, as sshd does
        )
        self._procs.append(proc)

        def pump(source: IO[bytes], send: Callable[[bytes], None]) -> None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                while chunk := os.read(source.fileno(), 4096):
                    send(chunk)

        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            threading.Thread(target=pump, args=(proc.stdout, channel.sendall), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, channel.sendall_stderr), daemon=True),
        ]
        for thread in pumps:
            thread.start()
        while True:
            try:
                status = proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                if channel.closed or self._closed:
                    _kill(proc)  # the client went away
        for thread in pumps:
            thread.join(timeout=5)
        proc.stdout.close()
        proc.stderr.close()
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            if status >= 0:  # sshd reports a signal death as exit-signal, not a status
                channel.send_exit_status(status)
            channel.close()

    def drop_connections(self) -> None:
        for transport in self._transports:
            transport.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop_connections()
        for proc in self._procs:
            _kill(proc)
            proc.wait()
        for thread in self.threads:
            thread.join(timeout=5)
        self._acceptor.join(timeout=5)


# -- fixtures ---------------------------------------------------------------------------


@dataclass
class Env:
    server: SSHTestServer
    home: Path
    work: Path
    key_path: Path
    host_key_public: str
    user: str

    def target(self, **overrides: Any) -> SSHTarget:
        values: dict[str, Any] = {
            "name": "vm1",
            "host": "127.0.0.1",
            "port": self.server.port,
            "user": self.user,
            "key_path": self.key_path,
            "host_key_public": self.host_key_public,
        }
        values.update(overrides)
        return SSHTarget(**values)


def _paramiko_key(pair: KeyPair) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pair.private_openssh))


def _make_server(
    tmp_path: Path, host_key: paramiko.PKey, port: int = 0, user_key: KeyPair | None = None
) -> Env:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # A stand-in for sudo: checks the flags we promise to pass, then runs the rest as is.
    fake_sudo = bin_dir / "sudo"
    fake_sudo.write_text(
        '#!/bin/sh\n[ "$1" = -n ] && [ "$2" = -E ] || exit 99\nshift 2\nSUDO_FAKE=1 exec "$@"\n'
    )
    fake_sudo.chmod(0o755)
    user_key = user_key or generate_ed25519("ccloudvm")
    key_path = tmp_path / "id_ed25519"
    write_keypair(user_key, key_path)
    env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home)}
    server = SSHTestServer(
        host_key=host_key,
        user="alice",
        allowed_key_b64=user_key.public_openssh.split()[1],
        home=home,
        env=env,
        port=port,
    )
    public = f"{host_key.get_name()} {host_key.get_base64()} vm1-host"
    return Env(server, home, work, key_path, public, "alice")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    made = _make_server(tmp_path, _paramiko_key(generate_ed25519("host")))
    try:
        yield made
    finally:
        made.server.close()


@pytest.fixture
def target(env: Env) -> Iterator[SSHTarget]:
    with env.target() as connected:
        yield connected


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- commands ---------------------------------------------------------------------------


def test_exit_status_and_merged_output_line_by_line(target: SSHTarget) -> None:
    lines: list[str] = []
    script = "echo one; sleep 0.1; echo two >&2; sleep 0.1; printf 'three\\r\\nfour'; exit 7"
    status = target.run(["sh", "-c", script], output=lines.append)
    assert status == 7
    assert lines == ["one", "two", "three", "four"]
    assert target.run(["true"]) == 0


def test_env_is_passed(target: SSHTarget) -> None:
    lines: list[str] = []
    env = {"FOO": "a b", "BAR": "x'y$z"}
    status = target.run(["sh", "-c", 'echo "$FOO|$BAR"'], env=env, output=lines.append)
    assert status == 0
    assert lines == ["a b|x'y$z"]
    with pytest.raises(UsageError, match="environment variable name .* is not valid"):
        target.run(["true"], env={"A=B": "c"})


def test_argv_is_quoted_no_injection(target: SSHTarget, env: Env) -> None:
    marker = env.work / "pwned"
    tricky = [
        "with space",
        "it's",
        'say "hi"',
        "$HOME",
        "$(touch " + str(marker) + ")",
        "`touch " + str(marker) + "`",
        "; touch " + str(marker),
        "| touch " + str(marker),
        "*",
        "",
        "back\\slash",
        "new\nline",
    ]
    status, out = target.run_capture(["printf", "%s\\0", *tricky])
    assert status == 0
    assert out.split("\0")[:-1] == tricky
    assert not marker.exists()


def test_sudo_goes_through_sudo_n_E_and_keeps_env(target: SSHTarget, env: Env) -> None:
    lines: list[str] = []
    status = target.run(
        ["sh", "-c", 'echo "$FOO $SUDO_FAKE"'], env={"FOO": "bar"}, sudo=True, output=lines.append
    )
    assert status == 0
    assert lines == ["bar 1"]
    assert env.server.commands[-1].startswith("sudo -n -E env FOO=bar sh -c ")


def test_build_command() -> None:
    assert build_command(["ls", "-l"]) == "ls -l"
    assert build_command(["echo", "a b"], env={"X": "1 2"}) == "env 'X=1 2' echo 'a b'"
    assert build_command(["id"], sudo=True) == "sudo -n -E id"
    with pytest.raises(UsageError):
        build_command([])


def test_run_capture_returns_stdout_only(target: SSHTarget) -> None:
    status, out = target.run_capture(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (status, out) == (3, "out\n")


def test_timeout_stops_waiting(target: SSHTarget) -> None:
    start = time.monotonic()
    with pytest.raises(CcloudvmError, match="did not finish within 0.5 s"):
        target.run(["sleep", "10"], timeout=0.5)
    assert time.monotonic() - start < 3
    # The connection is still usable afterwards.
    assert target.run_capture(["echo", "ok"]) == (0, "ok\n")


def test_lost_connection_is_reported(env: Env) -> None:
    target = env.target()
    target.connect()
    try:
        env.server.drop_connections()
        time.sleep(0.2)
        with pytest.raises(CcloudvmError, match="lost the SSH connection to vm1"):
            target.run(["true"])
    finally:
        target.close()


def test_connection_lost_during_a_command(env: Env) -> None:
    target = env.target()
    target.connect()
    try:
        timer = threading.Timer(0.3, env.server.drop_connections)
        timer.start()
        with pytest.raises(CcloudvmError, match="lost the SSH connection to vm1"):
            target.run(["sleep", "5"], timeout=4)
        timer.join()
    finally:
        target.close()


# -- files ------------------------------------------------------------------------------


def test_put_and_get_file(target: SSHTarget, env: Env) -> None:
    local = env.work / "script.sh"
    local.write_bytes(b"#!/bin/sh\necho hi\n" + bytes(range(256)) * 500)
    remote = str(env.home / "bin-script.sh")
    target.put_file(local, remote, mode=0o755)
    assert (env.home / "bin-script.sh").read_bytes() == local.read_bytes()
    assert stat.S_IMODE((env.home / "bin-script.sh").stat().st_mode) == 0o755

    back = env.work / "back.sh"
    target.get_file(remote, back)
    assert back.read_bytes() == local.read_bytes()
    assert stat.S_IMODE(back.stat().st_mode) == 0o755


def test_put_text_mode_and_home_relative_paths(target: SSHTarget, env: Env) -> None:
    target.put_text("secret=1\n", "~/proxy.env", mode=0o600)
    written = env.home / "proxy.env"
    assert written.read_text() == "secret=1\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    target.put_text("replaced\n", "proxy.env", mode=0o640)
    assert written.read_text() == "replaced\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o640


def test_missing_remote_file_is_a_clear_error(target: SSHTarget, env: Env) -> None:
    with pytest.raises(CcloudvmError, match="cannot read /nonexistent/x on vm1: no such file"):
        target.get_file("/nonexistent/x", env.work / "x")
    assert not (env.work / "x").exists()
    (env.home / "f").write_text("f")
    with pytest.raises(CcloudvmError, match="cannot write .*/no/such/dir/f"):
        target.get_file("f", env.work / "no" / "such" / "dir" / "f")
    with pytest.raises(CcloudvmError, match="cannot write"):
        target.put_text("x", "/nonexistent/dir/file")


def test_put_and_get_tree(target: SSHTarget, env: Env) -> None:
    src = env.work / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.sh").write_text("b")
    (src / "sub" / "b.sh").chmod(0o750)
    (src / "sub" / "deeper" / "c").write_bytes(b"\0c")
    (src / "empty").mkdir()
    (src / "link").symlink_to("sub/b.sh")

    remote = str(env.home / "copied")
    target.put_tree(src, remote)
    assert target.is_dir(remote)
    assert target.is_dir("~/copied/sub")
    assert not target.is_dir(remote + "/a.txt")
    assert not target.is_dir(remote + "/missing")
    copied = env.home / "copied"
    assert (copied / "a.txt").read_text() == "a"
    assert (copied / "sub" / "deeper" / "c").read_bytes() == b"\0c"
    assert stat.S_IMODE((copied / "sub" / "b.sh").stat().st_mode) == 0o750
    assert (copied / "empty").is_dir()
    assert os.readlink(copied / "link") == "sub/b.sh"
    # Copying again into the existing folder overwrites, not fails.
    (src / "a.txt").write_text("a2")
    target.put_tree(src, remote)
    assert (copied / "a.txt").read_text() == "a2"

    back = env.work / "back"
    target.get_tree(remote, back)
    assert (back / "a.txt").read_text() == "a2"
    assert (back / "sub" / "deeper" / "c").read_bytes() == b"\0c"
    assert stat.S_IMODE((back / "sub" / "b.sh").stat().st_mode) == 0o750
    assert (back / "empty").is_dir()
    assert os.readlink(back / "link") == "sub/b.sh"

    with pytest.raises(UsageError, match="is not a folder"):
        target.put_tree(src / "a.txt", remote)
    with pytest.raises(CcloudvmError, match="cannot list"):
        target.get_tree(str(env.home / "nope"), back)


# -- host keys and connecting -----------------------------------------------------------


def test_known_hosts_line() -> None:
    public = generate_ed25519("comment").public_openssh
    kind, blob, _ = public.split()
    assert known_hosts_line("127.77.0.2", 10022, public) == f"[127.77.0.2]:10022 {kind} {blob}"
    assert known_hosts_line("10.0.0.1", 22, public) == f"10.0.0.1 {kind} {blob}"


def test_changed_host_key_is_refused(env: Env) -> None:
    other = generate_ed25519("other").public_openssh
    target = env.target(host_key_public=other)
    with pytest.raises(HostKeyMismatchError, match="host key of instance vm1 changed") as info:
        target.connect(timeout=5)
    assert "refusing to connect" in info.value.message
    assert "SHA256:" in info.value.message
    assert env.server.commands == []


def test_host_key_of_another_type_is_refused(tmp_path: Path) -> None:
    made = _make_server(tmp_path, paramiko.ECDSAKey.generate())
    try:
        pinned = generate_ed25519("pinned").public_openssh
        with pytest.raises(HostKeyMismatchError, match="offered ecdsa-sha2-nistp256"):
            made.target(host_key_public=pinned).connect(timeout=5)
    finally:
        made.server.close()


def test_wrong_user_or_key_is_refused(env: Env, tmp_path: Path) -> None:
    with pytest.raises(CcloudvmError, match="refused the login as bob"):
        env.target(user="bob").connect(timeout=5)
    stranger = tmp_path / "stranger"
    write_keypair(generate_ed25519("x"), stranger)
    with pytest.raises(CcloudvmError, match="refused the login as alice"):
        env.target(key_path=stranger).connect(timeout=5)
    with pytest.raises(CcloudvmError, match="is missing"):
        env.target(key_path=tmp_path / "nokey").connect(timeout=5)


def test_connect_refused_port(env: Env) -> None:
    with pytest.raises(CcloudvmError, match=r"connection to vm1 \(127.0.0.1:\d+\) refused"):
        env.target(port=_free_port()).connect(timeout=1)


def test_wait_for_ssh_times_out_with_last_reason(env: Env) -> None:
    attempts: list[str] = []
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(
        CcloudvmError, match=r"vm1 did not accept SSH in time: connection to"
    ) as info:
        wait_for_ssh(
            name="vm1",
            host="127.0.0.1",
            port=port,
            user="alice",
            key_path=env.key_path,
            host_key_public=env.host_key_public,
            deadline=start + 1.2,
            on_attempt=attempts.append,
        )
    elapsed = time.monotonic() - start
    assert 1.2 <= elapsed < 3
    assert "refused" in info.value.message
    assert len(attempts) >= 2
    assert all("refused" in reason for reason in attempts)


def test_wait_for_ssh_silent_server_reports_no_banner(env: Env) -> None:
    # A TCP port that accepts and never speaks SSH (a guest still booting behind hostfwd).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        start = time.monotonic()
        with pytest.raises(CcloudvmError, match="did not accept SSH in time") as info:
            wait_for_ssh(
                name="vm1",
                host="127.0.0.1",
                port=silent.getsockname()[1],
                user="alice",
                key_path=env.key_path,
                host_key_public=env.host_key_public,
                deadline=start + 1.5,
            )
        assert time.monotonic() - start < 4
        assert "no SSH handshake from vm1" in info.value.message


def test_wait_for_ssh_connects_once_the_server_is_up(tmp_path: Path) -> None:
    host_key = _paramiko_key(generate_ed25519("host"))
    user_key = generate_ed25519("ccloudvm")
    port = _free_port()
    started: list[Env] = []

    def start_later() -> None:
        time.sleep(1.0)
        started.append(_make_server(tmp_path, host_key, port=port, user_key=user_key))

    key_path = tmp_path / "id_ed25519"
    write_keypair(user_key, key_path)
    attempts: list[str] = []
    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        target = wait_for_ssh(
            name="vm1",
            host="127.0.0.1",
            port=port,
            user="alice",
            key_path=key_path,
            host_key_public=f"{host_key.get_name()} {host_key.get_base64()}",
            deadline=time.monotonic() + 10,
            on_attempt=attempts.append,
        )
        try:
            assert target.run_capture(["echo", "up"]) == (0, "up\n")
        finally:
            target.close()
        assert attempts and all("refused" in reason for reason in attempts)
    finally:
        thread.join()
        for made in started:
            made.server.close()
