"""The SSH target: run commands in an instance and copy files to and from it (paramiko).

The instance's host key was made on this host and given to cloud-init, so it is known
before the first connection and pinned: a guest offering any other key is refused,
never learnt. Only ccloudvm's own key is offered (no agent, no ~/.ssh keys), so a user
with many keys never hits the server's MaxAuthTries.

Commands are a list of arguments joined with shlex.join, so the guest's login shell
sees each argument as one quoted word and nothing in it is expanded.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import paramiko

from ccloudvm.core.errors import CcloudvmError
from ccloudvm.remote.commands import LineSplitter, build_command
from ccloudvm.remote.jump import JumpHost, JumpHostError
from ccloudvm.remote.sftp import SFTPFiles
from ccloudvm.remote.target import OutputSink

KEEPALIVE_SECONDS = 15
RETRY_PAUSE = 0.5
_CHUNK = 32768
_POLL = 0.2


class HostKeyMismatchError(CcloudvmError):
    """The instance offered a host key other than the one pinned for it."""


def _parse_public_key(text: str) -> tuple[str, bytes]:
    parts = text.split()
    if len(parts) < 2:
        raise CcloudvmError(f"invalid SSH public key {text!r}")
    try:
        return parts[0], base64.b64decode(parts[1], validate=True)
    except ValueError as exc:
        raise CcloudvmError(f"invalid SSH public key {text!r}") from exc


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def host_key_name(host: str, port: int) -> str:
    """How known_hosts names an endpoint: "[host]:port" unless the port is 22."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_line(host: str, port: int, host_key_public: str) -> str:
    """A known_hosts line pinning the instance's key, for the system ssh client."""
    kind, blob = _parse_public_key(host_key_public)
    return f"{host_key_name(host, port)} {kind} {base64.b64encode(blob).decode('ascii')}"


class _PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called when the server's key is not the pinned one (another type): refuse."""

    def __init__(self, name: str, expected: str) -> None:
        self._name = name
        self._expected = expected

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyMismatchError(
            f"host key of instance {self._name} changed: it offered {key.get_name()} "
            f"{fingerprint(key.asbytes())}, expected {self._expected}; refusing to connect",
            hint="if the instance was recreated outside ccloudvm, delete it and create it again",
        )


class SSHTarget:
    """One instance reached over SSH; implements ccloudvm.remote.target.Target."""

    def __init__(
        self, *, name: str, host: str, port: int, user: str, key_path: Path, host_key_public: str,
        jump: JumpHost | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.jump = jump  # the VM runs on another host: reach its forward through that host
        self._jump_client: paramiko.SSHClient | None = None
        self.host = host
        self.port = port
        self.user = user
        self.key_path = key_path
        self.host_key_public = host_key_public
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # -- connection ---------------------------------------------------------------

    def _endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _load_user_key(self) -> paramiko.PKey:
        try:
            return paramiko.Ed25519Key.from_private_key_file(str(self.key_path))
        except FileNotFoundError as exc:
            raise CcloudvmError(
                f"SSH key {self.key_path} is missing",
                hint="it is made on first use; recreate the instance to get it installed again",
            ) from exc
        except (OSError, paramiko.SSHException) as exc:
            raise CcloudvmError(f"cannot read SSH key {self.key_path}: {exc}") from exc

    def connect(self, timeout: float = 10) -> None:
        if self._client is not None:
            return
        kind, blob = _parse_public_key(self.host_key_public)
        expected = f"{kind} {fingerprint(blob)}"
        pinned = paramiko.PKey.from_type_string(kind, blob)
        pkey = self._load_user_key()
        client = paramiko.SSHClient()
        client.get_host_keys().add(host_key_name(self.host, self.port), kind, pinned)
        # Never learn keys: a key of another type than the pinned one is refused here.
        client.set_missing_host_key_policy(_PinnedKeyPolicy(self.name, expected))
        connected = False
        try:
            sock = None
            if self.jump is not None:
                self._jump_client = self._jump_client or self.jump.connect(timeout)
                sock = self.jump.channel_to(self._jump_client, self.host, self.port, timeout)
            client.connect(
                self.host, port=self.port, username=self.user, pkey=pkey, sock=sock,
                look_for_keys=False, allow_agent=False, timeout=timeout,
                banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
            )  # fmt: skip
            connected = True
        except Exception as exc:
            raise self._connect_error(exc, timeout, expected) from exc
        finally:
            if not connected:
                client.close()
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_SECONDS)
        self._client = client

    def _connect_error(self, exc: Exception, timeout: float, expected: str) -> Exception:
        where = f"{self.name} ({self._endpoint()})"
        if isinstance(exc, CcloudvmError):
            return exc
        if isinstance(exc, paramiko.BadHostKeyException):
            got = f"{exc.key.get_name()} {fingerprint(exc.key.asbytes())}"
            return HostKeyMismatchError(
                f"host key of instance {self.name} changed: it offered {got}, expected "
                f"{expected}; refusing to connect",
                hint="if the instance was recreated outside ccloudvm, delete it and create it again",
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return CcloudvmError(
                f"{where} refused the login as {self.user} with key {self.key_path}",
                hint="the guest has not installed the key yet, or its user differs",
            )
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            return CcloudvmError(f"connection to {where} refused")
        if isinstance(exc, ConnectionRefusedError):
            return CcloudvmError(f"connection to {where} refused")
        if isinstance(exc, TimeoutError | socket.timeout):
            return CcloudvmError(f"no answer from {where} within {timeout:g} s")
        if isinstance(exc, paramiko.SSHException) and any(
            text in str(exc) for text in ("protocol banner", "No existing session")
        ):
            # The port is open (QEMU forwards it) but sshd in the guest is not up yet.
            return CcloudvmError(f"no SSH handshake from {where} within {timeout:g} s")
        if isinstance(exc, paramiko.SSHException | EOFError | OSError):
            return CcloudvmError(f"SSH to {where} failed: {exc or type(exc).__name__}")
        return exc

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._jump_client is not None:
            self._jump_client.close()
            self._jump_client = None

    def __enter__(self) -> SSHTarget:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _transport(self) -> paramiko.Transport:
        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            self.close()
            raise CcloudvmError(
                f"lost the SSH connection to {self.name}",
                hint="check that the instance is still running",
            )
        return transport

    def _lost(self, exc: BaseException) -> CcloudvmError:
        self.close()
        return CcloudvmError(
            f"lost the SSH connection to {self.name}: {exc or type(exc).__name__}",
            hint="check that the instance is still running",
        )

    # -- commands -----------------------------------------------------------------

    def _exec(
        self,
        command: str,
        on_stdout: Callable[[bytes], None],
        on_stderr: Callable[[bytes], None] | None,
        timeout: float | None,
    ) -> int:
        """Run one command; on_stderr None merges stderr into stdout. Returns the status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            channel = self._transport().open_session()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc
        try:
            channel.set_combine_stderr(on_stderr is None)
            channel.settimeout(_POLL)
            channel.exec_command(command)
            if not _pump(channel, on_stdout, on_stderr, deadline):
                raise CcloudvmError(
                    f"command on {self.name} did not finish within {timeout:g} s: {command}"
                )
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.1)
            if not channel.status_event.wait(remaining):
                raise CcloudvmError(f"command on {self.name} gave no exit status: {command}")
            status = channel.recv_exit_status()
            if status < 0 and not channel.get_transport().is_active():
                raise self._lost(EOFError("connection closed during the command"))
            # No status but the connection is fine: killed by a signal. ssh(1) says 255.
            return 255 if status < 0 else status
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc) from exc
        finally:
            channel.close()

    def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        output: OutputSink | None = None,
        sudo: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Run argv in the guest, stream stdout+stderr line by line to output, return the status."""
        lines = LineSplitter(output)
        status = self._exec(build_command(argv, env=env, sudo=sudo), lines.feed, None, timeout)
        lines.flush()
        return status

    def run_capture(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        sudo: bool = False,
        timeout: float | None = None,
    ) -> tuple[int, str]:
        """Run argv and return (status, stdout). stderr is not mixed into the result."""
        out = bytearray()
        err = bytearray()
        status = self._exec(
            build_command(argv, env=env, sudo=sudo), out.extend, err.extend, timeout
        )
        return status, out.decode("utf-8", errors="replace")

    # -- files --------------------------------------------------------------------

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self._transport())
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise self._lost(exc) from exc
            if self._sftp is None:
                raise CcloudvmError(f"{self.name} offers no SFTP", hint="is sftp-server installed?")
        return self._sftp

    def _files(self) -> SFTPFiles:
        return SFTPFiles(self.name, self._sftp_client)

    def put_file(self, local: Path, remote: str, *, mode: int = 0o644) -> None:
        self._files().put_file(local, remote, mode=mode)

    def put_text(self, text: str, remote: str, *, mode: int = 0o644) -> None:
        self._files().put_text(text, remote, mode=mode)

    def get_file(self, remote: str, local: Path) -> None:
        """Copy a guest file to `local` (same mode), never leaving a half file behind."""
        self._files().get_file(remote, local)

    def is_dir(self, remote: str) -> bool:
        return self._files().is_dir(remote)

    def put_tree(self, local_dir: Path, remote_dir: str) -> None:
        """Copy the folder local_dir to remote_dir (created), like `cp -r` and keeping modes."""
        self._files().put_tree(local_dir, remote_dir)

    def get_tree(self, remote_dir: str, local_dir: Path) -> None:
        """Copy the folder remote_dir to local_dir (created), keeping modes and symlinks."""
        self._files().get_tree(remote_dir, local_dir)


def _pump(
    channel: paramiko.Channel,
    on_stdout: Callable[[bytes], None],
    on_stderr: Callable[[bytes], None] | None,
    deadline: float | None,
) -> bool:
    """Hand a command's output to the callbacks until it ends; False if `deadline`
    (time.monotonic()) passed first."""
    while True:
        if deadline is not None and time.monotonic() > deadline:
            return False
        if on_stderr is not None and channel.recv_stderr_ready():
            on_stderr(channel.recv_stderr(_CHUNK))
        try:
            data = channel.recv(_CHUNK)
        except TimeoutError:
            continue
        if not data:
            break
        on_stdout(data)
    if on_stderr is not None:
        while data := channel.recv_stderr(_CHUNK):
            on_stderr(data)
    return True


def wait_for_ssh(
    *,
    name: str,
    host: str,
    port: int,
    user: str,
    key_path: Path,
    host_key_public: str,
    deadline: float,
    on_attempt: Callable[[str], None] | None = None,
    jump: JumpHost | None = None,
) -> SSHTarget:
    """Connect as soon as the instance lets us in; give up at time.monotonic() >= deadline.

    Every failure is retried, a host key mismatch too: during the first boot sshd may
    start with the image's old keys before cloud-init writes ours. on_attempt gets the
    reason of each failed attempt (for a spinner).
    """
    last = "no attempt made"
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        target = SSHTarget(
            name=name, host=host, port=port, user=user, key_path=key_path,
            host_key_public=host_key_public, jump=jump,
        )  # fmt: skip
        try:
            target.connect(timeout=min(5.0, max(deadline - now, 0.2)))
            return target
        except JumpHostError:
            raise
        except CcloudvmError as exc:
            target.close()  # its connection to a jump host too: each try opens its own
            last = exc.message
            if on_attempt is not None:
                on_attempt(last)
        time.sleep(max(0.0, min(RETRY_PAUSE, deadline - time.monotonic())))
    raise CcloudvmError(
        f"{name} did not accept SSH in time: {last}",
        hint="look at the instance's serial log to see how far the boot got",
    )
