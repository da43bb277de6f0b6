from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from ccloudvm.errors import NotFoundError, StateError, UsageError
from ccloudvm.instance_state import (
    ImageRef,
    InstanceFiles,
    InstanceState,
    allocate_host_ip,
    instance_lock,
    load_state,
    pick_ssh_port,
    port_free,
    random_name,
    save_state,
    validate_name,
)
from ccloudvm.paths import StateDir
from ccloudvm.specs import MountSpec


@pytest.mark.parametrize("name", ["dev", "a", "web-1", "x" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "Dev", "a_b", "a.b", "x" * 64, "../etc"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid instance name"):
        validate_name(name)


def test_random_names_avoid_taken_ones() -> None:
    taken = {random_name(set()) for _ in range(20)}
    name = random_name(taken)
    assert name not in taken
    validate_name(name)


def test_each_instance_gets_its_own_loopback_address() -> None:
    first = allocate_host_ip(set())
    second = allocate_host_ip({first})
    assert first.startswith("127.") and second.startswith("127.") and first != second


def test_ssh_port_skips_ports_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.77.9.9", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_free("127.77.9.9", port)
        assert pick_ssh_port("127.77.9.9", port) != port


def test_port_left_in_time_wait_is_free() -> None:
    # A forwarded port whose server side closed first (as QEMU's does after serving an
    # HTTP/1.0 reply) stays in TIME_WAIT after QEMU exits; start must still get it.
    # libslirp's listener sets SO_REUSEADDR, and so its accepted sockets have it too.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.77.9.10", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.77.9.10", port))
        accepted, _ = server.accept()
        accepted.close()  # the server closes first: its end goes to TIME_WAIT
        client.recv(1)
        client.close()
    assert port_free("127.77.9.10", port)


def _state(tmp_path: Path) -> InstanceState:
    return InstanceState(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2", "/c/vmlinuz"),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022, guest_user="ccloudvm",
        ports=["8080:80"], mounts=[InstanceState.mount_record(MountSpec(tmp_path, "/src", "mount0", "none"))],
    )  # fmt: skip


def test_state_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    files = InstanceFiles(state.instance_dir("dev"))
    files.dir.mkdir(parents=True)
    save_state(files, _state(tmp_path))
    loaded = load_state(state, "dev")
    assert loaded.image.kernel == "/c/vmlinuz"
    assert loaded.port_specs()[0].guest == 80
    assert loaded.mount_specs()[0].host_path == tmp_path


def test_missing_and_damaged_state(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    with pytest.raises(NotFoundError, match="no instance named 'nope'"):
        load_state(state, "nope")
    damaged = state.instance_dir("bad")
    damaged.mkdir(parents=True)
    (damaged / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="damaged"):
        load_state(state, "bad")


def test_lock_serialises_commands(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path / "dev")
    order: list[str] = []
    with instance_lock(files):
        worker = threading.Thread(target=lambda: _locked_append(files, order))
        worker.start()
        worker.join(0.5)
        order.append("first")
    worker.join(5)
    assert order == ["first", "second"]


def _locked_append(files: InstanceFiles, order: list[str]) -> None:
    with instance_lock(files):
        order.append("second")


def test_lock_times_out_with_a_clear_message(tmp_path: Path) -> None:
    files = InstanceFiles(tmp_path / "dev")
    errors: list[Exception] = []

    def contender() -> None:
        try:
            with instance_lock(files, timeout=0.3):
                pass
        except StateError as exc:
            errors.append(exc)

    with instance_lock(files):
        thread = threading.Thread(target=contender)
        thread.start()
        thread.join(5)
    assert errors and "another ccloudvm command" in str(errors[0])
