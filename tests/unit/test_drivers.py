"""The driver seam: the choice checked and remembered, old state files still valid, and
the libvirt driver's bad input in one line (no daemon needed for these)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.state.instance_state import (
    ImageRef,
    InstanceFiles,
    InstanceState,
    files_of,
    load_state,
    save_state,
)
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import drivers


def _state_of(**overrides: object) -> InstanceState:
    values: dict[str, object] = dict(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022, guest_user="u",
    )  # fmt: skip
    values.update(overrides)
    return InstanceState(**values)  # type: ignore[arg-type]


def test_a_state_file_from_before_drivers_loads_as_the_qemu_driver(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    files = files_of(state, "dev")
    files.dir.mkdir(parents=True)
    record = asdict(_state_of())
    del record["driver"], record["connect"]
    files.state.write_text(json.dumps(record))
    inst = load_state(state, "dev")
    assert (inst.driver, inst.connect) == ("qemu", "")
    assert isinstance(drivers.for_instance(files, inst), drivers.QemuDriver)


def test_the_driver_and_its_uri_are_remembered(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    files = files_of(state, "dev")
    files.dir.mkdir(parents=True)
    save_state(files, _state_of(driver="libvirt", connect="qemu:///system"))
    inst = load_state(state, "dev")
    assert (inst.driver, inst.connect) == ("libvirt", "qemu:///system")


def test_choice() -> None:
    assert drivers.check_choice("qemu", None) == ""
    assert drivers.check_choice("libvirt", None) == "qemu:///session"
    assert drivers.check_choice("libvirt", "qemu:///system") == "qemu:///system"
    with pytest.raises(UsageError, match="--connect goes with --driver libvirt"):
        drivers.check_choice("qemu", "qemu:///system")


def test_the_qemu_driver_of_a_stopped_instance(tmp_path: Path) -> None:
    driver = drivers.for_instance(InstanceFiles(tmp_path), _state_of())
    assert not driver.is_running() and driver.status() == "stopped"
    assert driver.console_log == tmp_path / "serial.log"
    assert driver.ssh_endpoint() == ("127.77.0.2", 10022)
    driver.stop(1)  # nothing runs: nothing to do
    driver.quit()


def _create(home: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", "create", "debian", "--name", "dev", *flags],
        env={**os.environ, "CCLOUDVM_HOME": str(home)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _one_line(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_connect_without_libvirt_is_refused(tmp_path: Path) -> None:
    _one_line(_create(tmp_path, "--connect", "qemu:///system"), 2, "--connect goes with")


def test_a_libvirt_uri_that_does_not_answer(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    uri = f"qemu:///system?socket={tmp_path / 'none'}"
    _one_line(_create(tmp_path, "--driver", "libvirt", "--connect", uri), 1, "does not answer")
    assert not (tmp_path / "instances" / "dev").exists()


REMOTE = "qemu+ssh://u@h.example/system"


def test_a_remote_libvirt_cannot_mount_this_hosts_folders(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    (tmp_path / "src").mkdir()
    result = _create(tmp_path, "--driver", "libvirt", "--connect", REMOTE,
                     "--mount", f"{tmp_path / 'src'}:/src")  # fmt: skip
    _one_line(result, 2, f"a VM on h.example cannot mount this host's folder {tmp_path / 'src'}")
    assert not (tmp_path / "instances" / "dev").exists()


def test_a_remote_libvirt_cannot_listen_here(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    result = _create(tmp_path, "--driver", "libvirt", "--connect", REMOTE, "--port", "18080:80")
    _one_line(result, 2, "--port 127.0.0.1:18080 -> 80 would listen on h.example, not here")


def test_a_remote_libvirt_without_ssh_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    result = _create(tmp_path, "--driver", "libvirt", "--connect", "qemu+tcp://h.example/system")
    _one_line(result, 2, "needs an SSH transport")


def test_instances_shows_the_driver_and_where_it_runs(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    for name, driver, uri in (("one", "qemu", ""), ("two", "libvirt", "qemu:///session")):
        files = files_of(state, name)
        files.dir.mkdir(parents=True)
        save_state(files, _state_of(name=name, driver=driver, connect=uri, desired="stopped"))
    result = subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", "instances"],
        env={**os.environ, "CCLOUDVM_HOME": str(tmp_path), "COLUMNS": "200"},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows["one"].rstrip().endswith("qemu"), result.stdout
    assert rows["two"].rstrip().endswith("libvirt (local)"), result.stdout
    as_json = {r["name"]: r["driver"] for r in json.loads(subprocess.run(  # noqa: S603
        [sys.executable, "-m", "ccloudvm", "instances", "--json"],
        env={**os.environ, "CCLOUDVM_HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=True,
    ).stdout)}  # fmt: skip
    assert as_json == {"one": "qemu", "two": "libvirt qemu:///session"}
