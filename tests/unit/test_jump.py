"""The host between ccloudvm and a guest on another machine (ccloudvm.remote.jump), and
SSH to the guest through it (SSHTarget(jump=...), wait_for_ssh), against real SSH servers
started in the test: a jump host made of paramiko's server side on 127.0.0.1, which
authenticates one key and opens direct-tcpip channels to where it is asked (or refuses
to forward), and the guest server of tests/unit/test_ssh.py behind it. Its host key is
made here and written into a known_hosts file the way ssh records it."""

from __future__ import annotations

import contextlib
import getpass
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_FAILED_CONNECT_FAILED,
    OPEN_SUCCEEDED,
)

from ccloudvm.core.errors import CcloudvmError
from ccloudvm.guest.keys import KeyPair, generate_ed25519, write_keypair
from ccloudvm.remote.jump import JumpHost, JumpHostError, JumpHostUnreachable
from ccloudvm.remote.ssh import wait_for_ssh
from tests.unit.test_ssh import Env, _free_port, _make_server, _paramiko_key

# -- a jump host -----------------------------------------------------------------------


def _relay(channel: paramiko.Channel, sock: socket.socket) -> None:
    def one_way(read: object, write: object) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            while data := read(32768):  # type: ignore[operator]
                write(data)  # type: ignore[operator]
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            channel.close()
        sock.close()

    for read, write in ((channel.recv, sock.sendall), (sock.recv, channel.sendall)):
        threading.Thread(target=one_way, args=(read, write), daemon=True).start()


class _JumpServer(paramiko.ServerInterface):
    def __init__(self, owner: JumpTestServer) -> None:
        self.owner = owner
        self.pending: dict[int, socket.socket] = {}

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.owner.user and key.get_base64() == self.owner.allowed_key_b64:
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        self.owner.forwards.append(destination)
        self.owner.answer.wait(30)  # cleared: a host that does not answer (yet)
        if not self.owner.forwarding:
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED  # AllowTcpForwarding no
        try:
            self.pending[chanid] = socket.create_connection(destination, timeout=5)
        except OSError:
            return OPEN_FAILED_CONNECT_FAILED
        return OPEN_SUCCEEDED


class JumpTestServer:
    """An SSH server that only forwards (what a jump host does for ssh -J)."""

    def __init__(self, host_key: paramiko.PKey, user: str, allowed_key_b64: str) -> None:
        self.host_key = host_key
        self.user = user
        self.allowed_key_b64 = allowed_key_b64
        self.forwarding = True
        self.answer = threading.Event()
        self.answer.set()
        self.forwards: list[tuple[str, int]] = []
        self.transports: list[paramiko.Transport] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

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
            self.transports.append(transport)
            server = _JumpServer(self)
            try:
                transport.start_server(server=server)
            except paramiko.SSHException:
                transport.close()
                continue
            thread = threading.Thread(target=self._channels, args=(transport, server), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _channels(self, transport: paramiko.Transport, server: _JumpServer) -> None:
        while transport.is_active() and not self._closed:
            channel = transport.accept(timeout=0.2)
            if channel is not None:
                _relay(channel, server.pending.pop(channel.get_id()))

    def active(self) -> int:
        """How many SSH connections to it are still open."""
        return sum(t.is_active() for t in self.transports)

    def close(self) -> None:
        self._closed = True
        self.answer.set()
        self._listener.close()
        for transport in self.transports:
            transport.close()
        for thread in self._threads:
            thread.join(timeout=5)


# -- fixtures ---------------------------------------------------------------------------


@dataclass
class Jump:
    server: JumpTestServer
    host_key: paramiko.PKey
    user_key: KeyPair
    key_path: Path
    known_hosts: Path

    def host(self, **overrides: object) -> JumpHost:
        values: dict[str, object] = dict(
            host="127.0.0.1", port=self.server.port, user="bob", key_path=self.key_path,
            known_hosts=self.known_hosts,
        )  # fmt: skip
        values.update(overrides)
        return JumpHost(**values)  # type: ignore[arg-type]


def _known_line(port: int, key: paramiko.PKey) -> str:
    return f"[127.0.0.1]:{port} {key.get_name()} {key.get_base64()}\n"


@pytest.fixture
def jump(tmp_path: Path) -> Iterator[Jump]:
    host_key = _paramiko_key(generate_ed25519("jump-host"))
    user_key = generate_ed25519("bob")
    key_path = tmp_path / "bob_id"
    write_keypair(user_key, key_path)
    server = JumpTestServer(host_key, "bob", user_key.public_openssh.split()[1])
    known = tmp_path / "known_hosts"
    other = _paramiko_key(generate_ed25519("other"))
    known.write_text(
        f"# recorded by ssh\nfar.example {other.get_name()} {other.get_base64()}\n"
        + _known_line(server.port, host_key)
    )
    try:
        yield Jump(server, host_key, user_key, key_path, known)
    finally:
        server.close()


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[Env]:
    (tmp_path / "guest").mkdir()
    made = _make_server(tmp_path / "guest", _paramiko_key(generate_ed25519("guest-host")))
    try:
        yield made
    finally:
        made.server.close()


def _wait_until(predicate: object, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


# -- connect ----------------------------------------------------------------------------


def test_connect_with_the_host_key_in_known_hosts(jump: Jump) -> None:
    client = jump.host().connect(timeout=5)
    try:
        transport = client.get_transport()
        assert transport is not None and transport.is_authenticated()
        assert transport.get_remote_server_key().get_base64() == jump.host_key.get_base64()
    finally:
        client.close()


def test_without_known_hosts_in_the_uri_the_systems_file_counts_too(
    jump: Jump, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As ssh's GlobalKnownHostsFile: a host recorded only there is known.
    from ccloudvm.remote import jump as jump_module

    monkeypatch.setattr(jump_module, "GLOBAL_KNOWN_HOSTS", jump.known_hosts)
    monkeypatch.setenv("HOME", str(tmp_path / "no-home"))  # no ~/.ssh/known_hosts at all
    client = jump.host(known_hosts=jump_module.DEFAULT_KNOWN_HOSTS).connect(timeout=5)
    client.close()


def test_a_missing_known_hosts_file_is_one_line(jump: Jump, tmp_path: Path) -> None:
    host = jump.host(known_hosts=tmp_path / "nowhere" / "known_hosts")
    with pytest.raises(JumpHostError) as info:
        host.connect(timeout=5)
    assert info.value.message == (
        f"cannot read {tmp_path / 'nowhere' / 'known_hosts'} to check the host key of "
        "127.0.0.1: No such file or directory"
    )
    assert info.value.hint == (
        f"ssh to it once (ssh -p {jump.server.port} bob@127.0.0.1) to record its key, "
        "or give known_hosts=FILE in the URI"
    )
    assert jump.server.transports == []  # not even a TCP connection


def test_a_host_missing_from_known_hosts_is_refused_not_learnt(jump: Jump) -> None:
    jump.known_hosts.write_text(jump.known_hosts.read_text().splitlines(keepends=True)[1])
    before = jump.known_hosts.read_text()
    with pytest.raises(JumpHostError) as info:
        jump.host().connect(timeout=5)
    assert info.value.message == (
        f"[127.0.0.1]:{jump.server.port} is not in {jump.known_hosts}; its host key cannot "
        "be checked"
    )
    assert info.value.hint is not None and "known_hosts=FILE" in info.value.hint
    assert jump.known_hosts.read_text() == before
    assert _wait_until(lambda: jump.server.active() == 0)


@pytest.mark.parametrize(
    "damage",
    [b"far.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\n", b"\xff\xfe binary\n"],
    ids=["bad-base64", "not-text"],
)
def test_a_damaged_known_hosts_file_is_one_line(jump: Jump, damage: bytes) -> None:
    jump.known_hosts.write_bytes(jump.known_hosts.read_bytes() + damage)
    with pytest.raises(JumpHostError) as info:
        jump.host().connect(timeout=5)
    assert info.value.message == (
        f"cannot read {jump.known_hosts} to check the host key of 127.0.0.1: it has a line "
        "that is not a host key"
    )
    assert info.value.hint == f"fix or remove that line of {jump.known_hosts}"
    assert jump.server.transports == []


def test_another_host_key_is_refused(jump: Jump) -> None:
    impostor = _paramiko_key(generate_ed25519("impostor"))
    jump.known_hosts.write_text(_known_line(jump.server.port, impostor))
    with pytest.raises(JumpHostError) as info:
        jump.host().connect(timeout=5)
    assert info.value.message == (
        f"the host key of 127.0.0.1 is not the one {jump.known_hosts} has; refusing to connect"
    )
    assert info.value.hint == f"check the host, and fix its line in {jump.known_hosts}"


def test_a_known_hosts_path_with_a_tilde_is_the_users(
    jump: Jump, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    jump.host(known_hosts=Path("~/known_hosts")).connect(timeout=5).close()


def test_a_key_path_with_a_tilde_is_the_users(
    jump: Jump, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ssh (IdentityFile in the generated stanza) and libvirt's keyfile= read it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    jump.host(key_path=Path("~/bob_id")).connect(timeout=5).close()


def test_the_wrong_key_is_one_line(jump: Jump, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    write_keypair(generate_ed25519("stranger"), stranger)
    with pytest.raises(JumpHostError) as info:
        jump.host(key_path=stranger).connect(timeout=5)
    assert info.value.message == "SSH to bob@127.0.0.1 failed: Authentication failed."


def test_without_a_key_the_users_own_keys_and_name_are_used(
    jump: Jump, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keyfile=, no user in the URI: ~/.ssh's keys and the local user, as ssh does."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    (tmp_path / ".ssh").mkdir()
    write_keypair(jump.user_key, tmp_path / ".ssh" / "id_ed25519")
    jump.server.user = getpass.getuser()
    jump.host(user="", key_path=None).connect(timeout=5).close()


def test_nothing_listening_is_one_line(jump: Jump) -> None:
    port = _free_port()
    with pytest.raises(JumpHostUnreachable) as info:  # retried by wait_for_ssh
        jump.host(port=port).connect(timeout=2)
    assert info.value.message.startswith(f"SSH to bob@127.0.0.1 port {port} failed: ")
    assert "Unable to connect" in info.value.message


def test_a_port_that_never_speaks_ssh_is_one_line(jump: Jump) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        host = jump.host(port=silent.getsockname()[1])
        jump.known_hosts.write_text(_known_line(host.port, jump.host_key))
        start = time.monotonic()
        with pytest.raises(JumpHostUnreachable) as info:  # retried by wait_for_ssh
            host.connect(timeout=0.5)
        assert time.monotonic() - start < 5
    assert info.value.message.startswith("SSH to bob@127.0.0.1 failed: ")
    assert "\n" not in info.value.message


def test_known_hosts_names_a_host_on_port_22_by_its_name_only() -> None:
    assert JumpHost(host="far.example")._known_key_name() == "far.example"
    assert JumpHost(host="far.example", port=2222)._known_key_name() == "[far.example]:2222"


# -- channels ---------------------------------------------------------------------------


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP echo service on 127.0.0.1 (a guest's forward, as the jump host sees it)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    while data := conn.recv(4096):
                        conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_channel_reaches_the_port_from_the_jump_host(jump: Jump, echo: int) -> None:
    host = jump.host()
    client = host.connect(timeout=5)
    try:
        channel = host.channel_to(client, "127.0.0.1", echo)
        channel.settimeout(5)
        channel.sendall(b"through the jump host\n")
        assert channel.recv(100) == b"through the jump host\n"
        channel.close()
    finally:
        client.close()
    assert jump.server.forwards == [("127.0.0.1", echo)]


def test_a_port_the_jump_host_cannot_reach_is_one_line(jump: Jump) -> None:
    host = jump.host()
    client = host.connect(timeout=5)
    port = _free_port()
    try:
        with pytest.raises(CcloudvmError) as info:
            host.channel_to(client, "127.77.0.2", port)
        assert not isinstance(info.value, JumpHostError)  # the forward may come up: retry
        assert info.value.message == f"127.0.0.1 could not reach 127.77.0.2:{port}: Connect failed"
    finally:
        client.close()


def test_a_jump_host_that_forbids_forwarding_is_one_line(jump: Jump, echo: int) -> None:
    jump.server.forwarding = False
    host = jump.host()
    client = host.connect(timeout=5)
    try:
        with pytest.raises(CcloudvmError) as info:
            host.channel_to(client, "127.0.0.1", echo)
        assert info.value.message == (
            f"127.0.0.1 could not reach 127.0.0.1:{echo}: Administratively prohibited"
        )
    finally:
        client.close()


def test_a_jump_host_that_does_not_answer_a_channel_is_given_up_on(jump: Jump, echo: int) -> None:
    host = jump.host()
    client = host.connect(timeout=5)
    jump.server.answer.clear()
    start = time.monotonic()
    try:
        with pytest.raises(paramiko.SSHException, match="Timeout opening channel"):
            host.channel_to(client, "127.0.0.1", echo, timeout=0.5)
        assert time.monotonic() - start < 3  # not paramiko's default of an hour
    finally:
        jump.server.answer.set()
        client.close()


def test_wait_for_ssh_gives_up_on_a_jump_host_that_does_not_answer_by_its_deadline(
    jump: Jump, guest: Env
) -> None:
    jump.server.answer.clear()
    start = time.monotonic()
    with pytest.raises(CcloudvmError, match="vm1 did not accept SSH in time: .*Timeout opening"):
        wait_for_ssh(
            name="vm1", host="127.0.0.1", port=guest.server.port, user=guest.user,
            key_path=guest.key_path, host_key_public=guest.host_key_public,
            deadline=start + 2, jump=jump.host(),
        )  # fmt: skip
    assert time.monotonic() - start < 8


def test_a_closed_connection_has_no_channels(jump: Jump, echo: int) -> None:
    host = jump.host()
    client = host.connect(timeout=5)
    client.close()
    with pytest.raises(CcloudvmError, match="the SSH connection to bob@127.0.0.1 is closed"):
        host.channel_to(client, "127.0.0.1", echo)


# -- the ssh_config stanza --------------------------------------------------------------


def test_the_stanza_quotes_paths_with_spaces() -> None:
    spaced = JumpHost("far.example", 22, "", Path("/my keys/id"), Path("/my keys/hosts"))
    stanza = spaced.ssh_config("j")
    assert '  IdentityFile "/my keys/id"\n' in stanza
    assert '  UserKnownHostsFile "/my keys/hosts"\n' in stanza


def test_the_stanza_names_the_host_its_key_and_its_known_hosts() -> None:
    full = JumpHost("far.example", 2222, "alice", Path("/k/id"), Path("/k/hosts"))
    assert full.ssh_config("ccloudvm-jump") == (
        "Host ccloudvm-jump\n"
        "  HostName far.example\n"
        "  Port 2222\n"
        "  User alice\n"
        "  IdentityFile /k/id\n"
        "  IdentitiesOnly yes\n"
        "  UserKnownHostsFile /k/hosts\n"
        "  StrictHostKeyChecking yes\n"
    )
    assert JumpHost("far.example").ssh_config("j") == (
        "Host j\n"
        "  HostName far.example\n"
        "  Port 22\n"
        "  UserKnownHostsFile ~/.ssh/known_hosts\n"
        "  StrictHostKeyChecking yes\n"
    )


# -- SSH to the guest through the jump host ---------------------------------------------


def test_ssh_to_the_guest_goes_through_the_jump_host(jump: Jump, guest: Env) -> None:
    target = guest.target(jump=jump.host())
    target.connect(timeout=5)
    try:
        assert target.run_capture(["echo", "far away"]) == (0, "far away\n")
        assert jump.server.forwards == [("127.0.0.1", guest.server.port)]
        jump_transport = target._jump_client.get_transport()  # type: ignore[union-attr]
        assert jump_transport is not None and jump_transport.is_active()
    finally:
        target.close()
    assert target._jump_client is None
    assert not jump_transport.is_active()
    assert _wait_until(lambda: jump.server.active() == 0)


def test_wait_for_ssh_stops_at_once_when_the_jump_host_refuses(
    jump: Jump, guest: Env, tmp_path: Path
) -> None:
    attempts: list[str] = []
    start = time.monotonic()
    with pytest.raises(JumpHostError, match="cannot read"):
        wait_for_ssh(
            name="vm1", host="127.0.0.1", port=guest.server.port, user=guest.user,
            key_path=guest.key_path, host_key_public=guest.host_key_public,
            deadline=start + 30, on_attempt=attempts.append,
            jump=jump.host(known_hosts=tmp_path / "missing"),
        )  # fmt: skip
    assert time.monotonic() - start < 3  # not retried until the deadline
    assert attempts == []


def test_wait_for_ssh_retries_a_forward_not_up_yet_and_closes_each_try(jump: Jump) -> None:
    attempts: list[str] = []
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(CcloudvmError) as info:
        wait_for_ssh(
            name="vm1", host="127.0.0.1", port=port, user="alice", key_path=jump.key_path,
            host_key_public=jump.user_key.public_openssh, deadline=start + 1.5,
            on_attempt=attempts.append, jump=jump.host(),
        )  # fmt: skip
    assert not isinstance(info.value, JumpHostError)
    assert time.monotonic() - start >= 1.5
    assert info.value.message == (
        f"vm1 did not accept SSH in time: 127.0.0.1 could not reach 127.0.0.1:{port}: "
        "Connect failed"
    )
    assert len(attempts) >= 2
    # every try's connection to the jump host is closed, none left behind
    assert len(jump.server.transports) == len(attempts)
    assert _wait_until(lambda: jump.server.active() == 0), jump.server.active()


def test_wait_for_ssh_through_the_jump_host_once_the_guest_is_up(
    jump: Jump, tmp_path: Path
) -> None:
    host_key = _paramiko_key(generate_ed25519("guest-host"))
    user_key = generate_ed25519("ccloudvm")
    port = _free_port()
    started: list[Env] = []
    (tmp_path / "late").mkdir()

    def start_later() -> None:
        time.sleep(1.0)
        started.append(_make_server(tmp_path / "late", host_key, port=port, user_key=user_key))

    key_path = tmp_path / "guest_id"
    write_keypair(user_key, key_path)
    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        target = wait_for_ssh(
            name="vm1", host="127.0.0.1", port=port, user="alice", key_path=key_path,
            host_key_public=f"{host_key.get_name()} {host_key.get_base64()}",
            deadline=time.monotonic() + 10, jump=jump.host(),
        )  # fmt: skip
        try:
            assert target.run_capture(["echo", "up"]) == (0, "up\n")
        finally:
            target.close()
    finally:
        thread.join()
        for made in started:
            made.server.close()
    assert _wait_until(lambda: jump.server.active() == 0), jump.server.active()


def test_a_guest_client_is_given_the_jump_channel_as_its_socket(
    jump: Jump, guest: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[object] = []
    real = paramiko.SSHClient.connect

    def connect(self: paramiko.SSHClient, *args: object, **kwargs: object) -> None:
        given.append(kwargs.get("sock"))
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    with guest.target(jump=jump.host()) as target:
        target.run_capture(["true"])
    assert len(given) == 2  # the jump host's connection, then the guest's
    assert given[0] is None and isinstance(given[1], paramiko.Channel)
