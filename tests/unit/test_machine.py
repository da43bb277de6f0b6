"""ccloudvm.vm.machine with real child processes: a fake qemu-system-x86_64
(tests/unit/fake_qemu) that daemonizes as QEMU does and speaks QMP on its socket, so the
launch, the shutdown ladder and the clean-up run exactly as with QEMU."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccloudvm.core import pids as process
from ccloudvm.state.instance_state import ImageRef, InstanceFiles, InstanceState
from ccloudvm.vm import drivers, qemu, warmboot
from ccloudvm.vm.accel import Acceleration
from ccloudvm.vm.machine import LaunchFailed, Machine, start_failure

FAKE_QEMU = Path(__file__).parent / "fake_qemu"


@pytest.fixture
def folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An instance folder with a short path (a unix socket's path has at most 107 bytes),
    the fake QEMU first on PATH; no fake QEMU outlives the test."""
    monkeypatch.setenv("PATH", f"{FAKE_QEMU}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_QEMU", raising=False)
    with tempfile.TemporaryDirectory(prefix="ccvm-m-") as tmp:
        where = Path(tmp) / "dev"
        where.mkdir()
        yield where
        pid = process.read_pid(where / "qemu.pid")
        if pid is not None and process.is_qemu_of(pid, where):
            os.kill(pid, signal.SIGKILL)


def _config(where: Path) -> qemu.MachineConfig:
    return qemu.MachineConfig(
        name="dev", accel=Acceleration("tcg", False, "test"), nested=False, mem_mib=512,
        cpus=1, disk=where / "disk.qcow2", seed=where / "seed.iso", host_ip="127.0.0.1",
        ssh_port=10022, qmp_socket=where / "qmp.sock", serial_log=where / "serial.log",
        pidfile=where / "qemu.pid",
    )  # fmt: skip


def _commands(where: Path) -> list[str]:
    log = where / "qmp.log"
    return log.read_text().split() if log.exists() else []


def test_launch_starts_qemu_and_hard_shutdown_ends_it(folder: Path) -> None:
    machine = Machine.configure(_config(folder))
    assert not machine.is_running()
    machine.launch()
    pid = machine.pid()
    assert pid is not None and pid == process.read_pid(folder / "qemu.pid")
    machine.hard_shutdown()
    assert not machine.is_running() and not process.is_qemu_of(pid, folder)
    assert _commands(folder) == ["quit"]
    assert not (folder / "qmp.sock").exists(), "the monitor socket is forgotten"
    machine.hard_shutdown()  # the ladder again: nothing more happens
    assert _commands(folder) == ["quit"]


def test_a_qemu_that_refuses_to_start_says_why_and_how_it_was_run(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "refuse")
    machine = Machine.configure(_config(folder))
    with pytest.raises(LaunchFailed) as failed:
        machine.launch()
    assert str(failed.value.message).startswith("QEMU failed to start 'dev': qemu-system-x86_64:")
    assert "Could not open '/nonexistent/disk.qcow2'" in failed.value.reason
    assert "--debug" in (failed.value.hint or "")
    assert failed.value.command == machine.argv and "-pidfile" in failed.value.command
    assert "\n" not in str(failed.value)
    assert not machine.is_running()


def test_soft_shutdown_lets_the_guest_power_off(folder: Path) -> None:
    machine = Machine.configure(_config(folder))
    machine.launch()
    machine.soft_shutdown(timeout=10)
    assert not machine.is_running()
    assert _commands(folder) == ["system_powerdown"], "no quit for a guest that powers off"
    assert not (folder / "qmp.sock").exists()


def test_soft_shutdown_quits_a_guest_that_ignores_the_power_button(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "deaf-guest")
    machine = Machine.configure(_config(folder))
    machine.launch()
    machine.soft_shutdown(timeout=0.3)
    assert not machine.is_running()
    assert _commands(folder) == ["system_powerdown", "quit"]
    assert "dev did not power off within 0 s; quitting QEMU" in capsys.readouterr().err


def test_a_qemu_whose_monitor_does_not_answer_is_killed(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccloudvm.vm import machine as machine_module
    from ccloudvm.vm import qmp

    monkeypatch.setenv("FAKE_QEMU", "deaf-monitor")
    monkeypatch.setattr(machine_module, "QUIT_TIMEOUT", 0.5)
    monkeypatch.setattr(qmp, "quit", _quit_quickly)  # "quit" unanswered: 0.5 s, not 5
    machine = Machine.configure(_config(folder))
    machine.launch()
    machine.hard_shutdown()
    assert not machine.is_running()
    assert _commands(folder) == ["quit"]


def _quit_quickly(socket: Path) -> None:
    from ccloudvm.vm import qmp

    with contextlib.suppress(qmp.QMPUnavailable):
        qmp.execute(socket, "quit", timeout=0.5)


def test_a_failure_inside_the_block_leaves_nothing_running(folder: Path) -> None:
    with pytest.raises(RuntimeError), Machine.configure(_config(folder)) as machine:
        machine.launch()
        assert machine.is_running()
        raise RuntimeError("the guest never got ready")
    assert not machine.is_running()
    assert _commands(folder) == ["quit"]


def test_wait_kills_a_qemu_that_does_not_exit_on_its_own(folder: Path) -> None:
    machine = Machine.configure(_config(folder))
    machine.launch()
    pid = machine.pid()
    assert pid is not None
    machine.wait(timeout=0.2)  # after a save that should have quit it
    assert not process.is_qemu_of(pid, folder)
    assert _commands(folder) == [], "not asked: killed"


def test_configure_for_an_incoming_state_and_attach_to_an_instance(folder: Path) -> None:
    incoming = Machine.configure(_config(folder), qemu_bin="qemu", incoming=True)
    assert incoming.argv[0] == "qemu" and incoming.argv[-2:] == ["-incoming", "defer"]
    assert incoming.serial_log == folder / "serial.log"
    attached = Machine.of_instance(InstanceFiles(folder))
    assert (attached.name, attached.pidfile, attached.qmp_socket) == (
        "dev", folder / "qemu.pid", folder / "qmp.sock",
    )  # fmt: skip
    with pytest.raises(LaunchFailed, match="no command line"):
        attached.launch()


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (None, "no output"),
        ("", "no output"),
        ("warning: x\nqemu: -m 9: bad size\n\n", "qemu: -m 9: bad size"),
    ],
)
def test_start_failure_is_qemus_last_line(output: str | None, reason: str) -> None:
    assert start_failure(output) == reason


# ---------------------------------------------------------------- the QEMU driver on it


def _instance() -> InstanceState:
    return InstanceState(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=512, cpus=1, disk_gib=8, host_ip="127.0.0.1", ssh_port=10022, guest_user="u",
    )  # fmt: skip


def test_the_qemu_driver_starts_asks_and_stops_through_the_machine(folder: Path) -> None:
    files = InstanceFiles(folder)
    driver = drivers.for_instance(files, _instance())
    assert driver.status() == "stopped"
    driver.define(_config(folder))
    driver.start()
    assert driver.is_running() and driver.status() == "running"
    assert driver.ssh_endpoint() == ("127.0.0.1", 10022)
    assert driver.console_log == files.serial
    driver.stop(timeout=10)
    assert not driver.is_running()
    assert _commands(folder) == ["query-status", "system_powerdown"]


@pytest.mark.parametrize("how", ["quit", "delete", "force_off"])
def test_the_qemu_driver_quits_at_once(folder: Path, how: str) -> None:
    files = InstanceFiles(folder)
    driver = drivers.for_instance(files, _instance())
    driver.define(_config(folder))
    driver.start()
    if how == "force_off":
        drivers.force_off(files)
    else:
        getattr(driver, how)()
    assert not driver.is_running()
    assert _commands(folder) == ["quit"]


def test_a_warm_start_loads_the_snapshot_and_runs_on(folder: Path) -> None:
    files = InstanceFiles(folder)
    snapshot = warmboot.Snapshot(folder / "snapshot")
    snapshot.directory.mkdir()
    snapshot.state_file.write_bytes(b"QEVM")
    driver = drivers.for_instance(files, _instance())
    driver.define(_config(folder), restore=snapshot)
    driver.start()
    assert driver.is_running()
    assert _commands(folder) == [
        "getfd", "migrate-incoming", "query-migrate", "block_resize", "cont",
    ]  # fmt: skip
    driver.quit()


def test_a_warm_start_whose_snapshot_does_not_load_leaves_nothing_running(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "bad-state")
    files = InstanceFiles(folder)
    snapshot = warmboot.Snapshot(folder / "snapshot")
    snapshot.directory.mkdir()
    snapshot.state_file.write_bytes(b"QEVM")
    driver = drivers.for_instance(files, _instance())
    driver.define(_config(folder), restore=snapshot)
    with pytest.raises(warmboot.WarmBootFailed, match="^loading the snapshot failed: load of"):
        driver.start()
    assert not driver.is_running()
    assert _commands(folder) == ["getfd", "migrate-incoming", "query-migrate", "quit"]
