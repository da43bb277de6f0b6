"""Bad input: one clear line, the right exit status, no traceback, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ccloudvm.state.instance_state import (
    ImageRef,
    InstanceFiles,
    InstanceState,
    save_state,
    unprivileged_port_start,
)
from ccloudvm.state.paths import StateDir


def ccloudvm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", *args],
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def _no_instances() -> None:
    home = Path(os.environ["CCLOUDVM_HOME"])
    assert not list((home / "instances").glob("*")) if (home / "instances").exists() else True


def test_unknown_workload() -> None:
    _one_line_error(ccloudvm("create", "no-such-workload"), 2, "no-such-workload")
    _no_instances()


@pytest.mark.parametrize("name", ["Bad_Name", "-x", "a" * 70])
def test_invalid_instance_name(name: str) -> None:
    _one_line_error(ccloudvm("create", "debian", "--name", name), 2, "invalid instance name")
    _no_instances()


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [("--mem", "10", "--mem 10 MiB is out of range"), ("--mem", "99999999", "out of range"),
     ("--cpus", "0", "--cpus 0 is out of range"), ("--cpus", "4096", "out of range"),
     ("--disk", "0", "--disk 0 GiB is out of range")],
)  # fmt: skip
def test_sizes_out_of_range(flag: str, value: str, needle: str) -> None:
    _one_line_error(ccloudvm("create", "debian", "--name", "x", flag, value), 2, needle)
    _no_instances()


def test_mount_source_missing(tmp_path: Path) -> None:
    result = ccloudvm("create", "debian", "--name", "x", "--mount", f"{tmp_path}/nope:/src")
    _one_line_error(result, 2, "does not exist")
    _no_instances()


@pytest.mark.parametrize("spec", ["abc", "1:2:3", "99999:80", "a:b:c:d"])
def test_bad_port_spec(spec: str) -> None:
    _one_line_error(ccloudvm("create", "debian", "--name", "x", "--port", spec), 2, "port")


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.5", "example.com"])
def test_a_port_on_a_non_loopback_address_is_refused(address: str) -> None:
    result = ccloudvm("create", "debian", "--name", "x", "--port", f"{address}:8080:80")
    _one_line_error(result, 2, "not a loopback address", "127.0.0.1")
    _no_instances()


@pytest.mark.parametrize(
    ("bind", "spec"),
    [("127.0.0.1", "{port}:80"), ("127.0.0.7", "127.0.0.7:{port}:80")],
)
def test_port_already_taken(bind: str, spec: str) -> None:
    with socket.socket() as busy:
        busy.bind((bind, 0))  # without ADDR a forward listens on 127.0.0.1 (localhost)
        busy.listen()
        port = busy.getsockname()[1]
        result = ccloudvm("create", "debian", "--name", "x", "--port", spec.format(port=port))
    # The fix: a free host port, or the instance's own address (127.77.X.Y, SSH's too).
    _one_line_error(
        result, 2, f"port {port} on {bind}", "already in use", "another host port (--port ",
        "the instance's own address (--port 127.77.", f":{port}:80)",
    )  # fmt: skip
    _no_instances()


def test_a_privileged_port_says_it_needs_root() -> None:
    # As an ordinary user: root without the capability to listen on ports below 1024.
    first = unprivileged_port_start()
    if first <= 80:
        pytest.skip(f"this host lets every user listen on ports from {first}")
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's port capability")
    prefix = [setpriv, "--bounding-set", "-net_bind_service", "--"] if os.geteuid() == 0 else []
    result = subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [*prefix, sys.executable, "-m", "ccloudvm", "create", "debian", "--name", "x",
         "--port", "80:80"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    _one_line_error(result, 2, "host port 80 needs root", f"pick a host port above {first - 1}")
    _no_instances()


def test_qemu_missing_says_how_to_install(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    result = ccloudvm("create", "debian", "--name", "x", env={"PATH": str(bare)})
    _one_line_error(
        result, 1, "qemu-system-x86_64 is not installed", "apt-get install qemu-system-x86"
    )
    _no_instances()


@pytest.mark.parametrize(
    "command",
    [
        ["status", "ghost"],
        ["start", "ghost"],
        ["stop", "ghost"],
        ["run", "ghost", "--", "true"],
        ["logs", "ghost"],
        ["ssh-config", "ghost"],
    ],
)
def test_commands_on_a_missing_instance(command: list[str]) -> None:
    _one_line_error(ccloudvm(*command), 2, "no instance named 'ghost'")


def _make_instance(name: str) -> InstanceFiles:
    """An instance as `create` leaves it after `stop`: its directory and state, no QEMU."""
    files = InstanceFiles(StateDir.from_env().instance_dir(name))
    files.dir.mkdir(parents=True)
    inst = InstanceState(
        name=name, workload="debian", image=ImageRef("debian-12", "k", "/nonexistent/disk.qcow2"),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022,
        guest_user="ccloudvm", desired="stopped",
    )  # fmt: skip
    save_state(files, inst)
    return files


def test_create_with_a_name_that_exists_changes_nothing() -> None:
    files = _make_instance("dev")
    before = files.state.read_text()
    result = ccloudvm("create", "debian", "--name", "dev")
    _one_line_error(result, 2, "an instance named 'dev' already exists")
    assert files.state.read_text() == before


def test_run_on_a_stopped_instance_says_how_to_start_it() -> None:
    _make_instance("dev")
    _one_line_error(ccloudvm("run", "dev", "--", "true"), 1, "'dev' is not running",
                    "ccloudvm start dev")  # fmt: skip


def test_a_damaged_state_file_is_one_line_and_delete_removes_it() -> None:
    files = _make_instance("dev")
    files.state.write_text("{}\n")
    result = ccloudvm("status", "dev")
    _one_line_error(result, 1, f"the state file {files.state} is damaged",
                    "'ccloudvm delete dev' removes the instance")  # fmt: skip
    assert ccloudvm("delete", "dev").returncode == 0
    assert not files.dir.exists()


def test_instances_lists_the_others_beside_a_damaged_one() -> None:
    _make_instance("good")
    _make_instance("bad").state.write_text('{"name": "bad", "colour": "red"}\n')
    result = ccloudvm("instances", "--json")
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == ["good"]
    assert "instances/bad/state.json is damaged" in result.stderr


def test_delete_missing_instance() -> None:
    _one_line_error(ccloudvm("delete", "ghost"), 2, "no instance named 'ghost'")


def test_teardown_without_instances_is_quiet_and_successful() -> None:
    result = ccloudvm("teardown")
    assert result.returncode == 0 and "no instances" in result.stderr


def test_instances_json_is_an_empty_list() -> None:
    result = ccloudvm("instances", "--json")
    assert result.returncode == 0 and result.stdout.strip() == "[]"


def test_bad_accel_from_environment() -> None:
    _one_line_error(
        ccloudvm("create", "debian", "--name", "x", env={"CCLOUDVM_ACCEL": "xen"}),
        2,
        "unknown accelerator",
    )


def test_help_explains_every_command() -> None:
    result = ccloudvm("--help")
    assert result.returncode == 0
    for command in (
        "create",
        "instances",
        "status",
        "run",
        "connect",
        "copy",
        "logs",
        "stop",
        "start",
        "quit",
        "delete",
        "teardown",
        "ssh-config",
        "setup",
    ):
        assert command in result.stdout


def test_a_disk_larger_than_the_host_file_system_is_refused() -> None:
    total = shutil.disk_usage(os.environ["CCLOUDVM_HOME"]).total // 2**30
    if total >= 4096:
        pytest.skip("this host's file system holds the largest --disk there is")
    result = ccloudvm("create", "debian", "--name", "huge", "--disk", "4096")
    _one_line_error(result, 2, "larger than the file system", "CCLOUDVM_HOME")
    _no_instances()


def test_an_unforeseen_host_error_is_one_line(tmp_path: Path) -> None:
    # The state directory is a plain file: the OS refuses, the user gets one line.
    home = tmp_path / "not-a-folder"
    home.write_text("")
    result = ccloudvm("create", "debian", "--name", "x", env={"CCLOUDVM_HOME": str(home)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and result.stderr.startswith("error:"), result.stderr
    assert str(home) in result.stderr
