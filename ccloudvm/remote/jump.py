"""A host between ccloudvm and a guest: SSH to a VM that runs on another machine goes
through that machine (ProxyJump), whose own host key is checked against a known_hosts
file, never learnt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import paramiko

from ccloudvm.core.errors import CcloudvmError

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
GLOBAL_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")


def _config_value(value: object) -> str:
    """A path as ssh_config reads it: quoted when it has a space."""
    text = str(value)
    return f'"{text}"' if any(c.isspace() for c in text) else text


class JumpHostError(CcloudvmError):
    """The host between us and the guest refused us: retrying will not help."""


class JumpHostUnreachable(CcloudvmError):
    """The host between us and the guest did not answer this time: try again."""


@dataclass(frozen=True)
class JumpHost:
    host: str
    port: int = 22
    user: str = ""  # empty: the local user's name, as ssh does
    key_path: Path | None = None  # None: ssh's usual keys and the agent
    known_hosts: Path = DEFAULT_KNOWN_HOSTS

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _known_key_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def connect(self, timeout: float) -> paramiko.SSHClient:
        """An SSH connection to the host, its key pinned by the known_hosts file."""
        known = self.known_hosts.expanduser()
        client = paramiko.SSHClient()
        try:
            # As ssh: the system's known hosts too (read-only), unless the URI names a file.
            if self.known_hosts == DEFAULT_KNOWN_HOSTS and GLOBAL_KNOWN_HOSTS.is_file():
                client.load_system_host_keys(str(GLOBAL_KNOWN_HOSTS))
                if not known.exists():
                    known = GLOBAL_KNOWN_HOSTS
            client.load_host_keys(str(known))
        except OSError as exc:
            raise JumpHostError(
                f"cannot read {known} to check the host key of {self.host}: {exc.strerror}",
                hint=f"ssh to it once (ssh -p {self.port} {self.destination}) to record its key, "
                "or give known_hosts=FILE in the URI",
            ) from None
        except (paramiko.hostkeys.InvalidHostKey, UnicodeDecodeError):
            raise JumpHostError(
                f"cannot read {known} to check the host key of {self.host}: it has a line "
                "that is not a host key",
                hint=f"fix or remove that line of {known}",
            ) from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.host, port=self.port, username=self.user or None,
                key_filename=str(self.key_path.expanduser()) if self.key_path else None,
                look_for_keys=self.key_path is None, allow_agent=self.key_path is None,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            )  # fmt: skip
        except paramiko.BadHostKeyException:
            client.close()
            raise JumpHostError(
                f"the host key of {self.host} is not the one {known} has; refusing to connect",
                hint=f"check the host, and fix its line in {known}",
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise JumpHostError(
                    f"{self._known_key_name()} is not in {known}; its host key cannot be checked",
                    hint=f"ssh to it once (ssh -p {self.port} {self.destination}) to record its "
                    "key, or give known_hosts=FILE in the URI",
                ) from None
            if isinstance(exc, paramiko.AuthenticationException):
                raise JumpHostError(f"SSH to {self.destination} failed: {exc}") from None
            # A handshake cut short (sshd busy: MaxStartups, a reset): worth another try.
            raise JumpHostUnreachable(f"SSH to {self.destination} failed: {exc}") from None
        except (TimeoutError, OSError) as exc:
            client.close()
            raise JumpHostUnreachable(
                f"SSH to {self.destination} port {self.port} failed: {exc}"
            ) from None
        return client

    def channel_to(
        self, client: paramiko.SSHClient, host: str, port: int, timeout: float | None = None
    ) -> paramiko.Channel:
        """A TCP connection from the jump host to host:port (its own loopback, say); an
        SSHException after `timeout` seconds without an answer (paramiko's default: 1 h)."""
        transport = client.get_transport()
        if transport is None:
            raise CcloudvmError(f"the SSH connection to {self.destination} is closed")
        try:
            return transport.open_channel(
                "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout
            )
        except paramiko.ChannelException as exc:
            # The forward is not listening yet (the guest's QEMU is still starting), or
            # the host forbids forwarding (AllowTcpForwarding no).
            raise CcloudvmError(
                f"{self.host} could not reach {host}:{port}: {exc.text or exc}",
            ) from None

    def ssh_config(self, alias: str) -> str:
        """An ssh_config stanza for the host, named `alias`, for ProxyJump."""
        lines = [f"Host {alias}", f"  HostName {self.host}", f"  Port {self.port}"]
        if self.user:
            lines.append(f"  User {self.user}")
        if self.key_path:
            lines += [f"  IdentityFile {_config_value(self.key_path)}", "  IdentitiesOnly yes"]
        lines += [
            f"  UserKnownHostsFile {_config_value(self.known_hosts)}",
            "  StrictHostKeyChecking yes",
        ]
        return "\n".join(lines) + "\n"
