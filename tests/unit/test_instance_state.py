from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from ccloudvm.core.errors import CcloudvmError, NotFoundError, StateError, UsageError
from ccloudvm.core.specs import MountSpec
from ccloudvm.state.instance_state import (
    ImageRef,
    InstanceFiles,
    InstanceState,
    all_states,
    allocate_host_ip,
    check_port_allowed,
    instance_lock,
    load_state,
    pick_ssh_port,
    port_free,
    random_name,
    save_state,
    unprivileged_port_start,
    validate_name,
)
from ccloudvm.state.paths import StateDir


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


def test_a_port_in_use_is_allowed_but_not_free() -> None:
    # "In use" is the caller's message to word; check_port_allowed only rules out the rest.
    with socket.socket() as busy:
        busy.bind(("127.77.9.11", 0))
        busy.listen()
        port = busy.getsockname()[1]
        check_port_allowed("127.77.9.11", port)
        assert not port_free("127.77.9.11", port)


def test_an_address_this_host_lacks_is_not_called_in_use() -> None:
    with pytest.raises(CcloudvmError, match="cannot listen on 192.0.2.1") as info:
        check_port_allowed("192.0.2.1", 18080)  # TEST-NET-1: on no host
    assert "in use" not in str(info.value)
    assert not port_free("192.0.2.1", 18080)


_UNPRIVILEGED_CHECK = """
import sys
from ccloudvm.core.errors import UsageError
from ccloudvm.state.instance_state import check_port_allowed, port_free
port = int(sys.argv[1])
print("free" if port_free("127.77.9.12", port) else "not free")
try:
    check_port_allowed("127.77.9.12", port)
except UsageError as exc:
    print(exc)
    sys.exit(2)
"""


def test_a_privileged_port_says_it_needs_root_not_in_use() -> None:
    first = unprivileged_port_start()
    if first == 0:
        pytest.skip("this host lets every user listen on any port")
    # Root (as here and in CI) may listen on any port: the check runs as root without
    # the capability that allows it, as an ordinary user would.
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's port capability")
        prefix = [setpriv, "--bounding-set", "-net_bind_service", "--"]
    result = subprocess.run(  # noqa: S603 - fixed argv
        [*prefix, sys.executable, "-c", _UNPRIVILEGED_CHECK, str(first - 1)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "not free",
        f"host port {first - 1} needs root (pick a host port above {first - 1})",
    ]


def test_unprivileged_port_start_reads_the_sysctl(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("80\n")
    assert unprivileged_port_start(sysctl) == 80
    assert unprivileged_port_start(tmp_path / "missing") == 1024


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


def _record(tmp_path: Path) -> dict[str, Any]:
    return asdict(_state(tmp_path))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r: {}, "no field name"),
        (lambda r: [r], "is not a JSON object"),
        (lambda r: {**r, "colour": "red"}, "unknown field colour"),
        (lambda r: {**r, "image": "debian-12"}, "field image is"),
        (lambda r: {**r, "image": {"name": "debian-12"}}, "no field image.key"),
        (lambda r: {**r, "mem_mib": "2048"}, 'field mem_mib is "2048", not int'),
        (lambda r: {**r, "nested": 1}, "field nested is 1, not bool"),
        (lambda r: {**r, "ports": [8080]}, "field ports is [8080]"),
        (lambda r: {**r, "ports": ["http"]}, "invalid port 'http'"),
        (lambda r: {**r, "mounts": [{"guest_path": "/src"}]}, "a mount has no 'host_path'"),
    ],
)  # fmt: skip
def test_state_of_the_wrong_shape_is_a_clear_error(
    tmp_path: Path, change: Any, problem: str
) -> None:
    state = StateDir(tmp_path / "home")
    files = InstanceFiles(state.instance_dir("dev"))
    files.dir.mkdir(parents=True)
    files.state.write_text(json.dumps(change(_record(tmp_path))))
    with pytest.raises(StateError) as info:
        load_state(state, "dev")
    message = str(info.value)
    assert "\n" not in message
    assert f"the state file {files.state} is damaged" in message
    assert problem in message
    assert info.value.hint == "'ccloudvm delete dev' removes the instance"
    assert all_states(state) == []


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


def test_every_problem_of_a_state_file_at_once(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "home")
    files = InstanceFiles(state.instance_dir("dev"))
    files.dir.mkdir(parents=True)
    record = {**_record(tmp_path), "mem_mib": "2048", "nested": 1, "colour": "red"}
    record["image"] = {**record["image"], "key": 7}
    files.state.write_text(json.dumps(record))
    with pytest.raises(StateError) as info:
        load_state(state, "dev")
    message = str(info.value)
    assert "\n" not in message
    for problem in (
        "unknown field colour",
        "field image.key is 7, not str",
        'field mem_mib is "2048", not int',
        "field nested is 1, not bool",
    ):
        assert problem in message
