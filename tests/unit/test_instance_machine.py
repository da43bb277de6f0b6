"""The instance commands (start, stop, quit, restart, delete, suspend, resume) and the
warm-boot snapshot boot, on the fake qemu-system-x86_64 of tests/unit/fake_qemu: real
processes found by their pid files, a real QMP conversation, a real saved state file.
Only the guest's side is faked (its readiness, its SSH commands)."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccloudvm.core import pids as process
from ccloudvm.core.errors import StateError, UsageError
from ccloudvm.core.proc import run
from ccloudvm.images.catalog import BaseImage
from ccloudvm.instance import access, boot, lifecycle, suspend, vmstate, warm
from ccloudvm.instance.status import status
from ccloudvm.state.instance_state import (
    ImageRef,
    InstanceState,
    files_of,
    load_state,
    save_state,
)
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import warmboot
from tests.unit.test_machine import FAKE_QEMU


class _Guest:
    """The guest's side over SSH: every command succeeds and is remembered."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.closed = False

    def run_capture(self, argv: list[str], sudo: bool = False) -> tuple[int, str]:
        self.commands.append(argv)
        return 0, ""

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> _Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[StateDir]:
    """A state folder (short: unix sockets) with a stopped instance "dev"; the fake QEMU
    first on PATH, the guest always ready; no fake QEMU outlives the test."""
    monkeypatch.setenv("PATH", f"{FAKE_QEMU}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_QEMU", raising=False)
    monkeypatch.setattr(boot, "wait_ready", lambda *a, **k: _Guest())
    with tempfile.TemporaryDirectory(prefix="ccvm-i-") as tmp:
        state = StateDir(Path(tmp))
        files = files_of(state, "dev")
        files.dir.mkdir(parents=True)
        inst = InstanceState(
            name="dev", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
            mem_mib=512, cpus=1, disk_gib=8, host_ip="127.0.0.1", ssh_port=_free_port(),
            guest_user="u", accel_mode="tcg",
        )  # fmt: skip
        save_state(files, inst)
        yield state
        for pidfile in Path(tmp).rglob("qemu.pid"):
            pid = process.read_pid(pidfile)
            if pid is not None and process.is_qemu_of(pid, pidfile.parent):
                os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _commands(state: StateDir) -> list[str]:
    log = files_of(state, "dev").dir / "qmp.log"
    return log.read_text().split() if log.exists() else []


def test_start_stop_quit_restart_delete(
    state: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    lifecycle.start(state, "dev")
    assert status(state, "dev").state == "running"
    assert load_state(state, "dev").accel_used == "tcg"
    lifecycle.start(state, "dev")
    assert "dev is already running" in capsys.readouterr().err
    lifecycle.stop(state, "dev", timeout=10)
    assert status(state, "dev").state == "stopped"
    assert _commands(state) == ["query-status", "system_powerdown"]
    lifecycle.stop(state, "dev")
    assert "dev is already stopped" in capsys.readouterr().err
    lifecycle.restart(state, "dev")
    assert status(state, "dev").state == "running"
    lifecycle.quit_instance(state, "dev")
    assert status(state, "dev").state == "stopped", "quit: stopped on purpose, not crashed"
    lifecycle.start(state, "dev")
    lifecycle.delete(state, "dev")
    assert not files_of(state, "dev").dir.exists()
    assert "dev deleted" in capsys.readouterr().err


def test_a_resize_of_a_running_instance_is_refused(state: StateDir) -> None:
    lifecycle.start(state, "dev")
    with pytest.raises(StateError, match="only while it is stopped"):
        lifecycle.start(state, "dev", resize=lifecycle.Resize(cpus=2))
    lifecycle.quit_instance(state, "dev")


def test_access_needs_a_running_instance(state: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StateError, match="'dev' is not running"):
        access.connect_target(state, "dev")
    lifecycle.start(state, "dev")
    guest = _Guest()
    monkeypatch.setattr(boot, "ssh_target_for", lambda *a, **k: guest)
    assert access.connect_target(state, "dev") is guest
    lifecycle.quit_instance(state, "dev")


def test_suspend_saves_the_state_and_resume_runs_from_it(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest = _Guest()
    monkeypatch.setattr(vmstate, "connect", lambda *a, **k: guest)
    files = files_of(state, "dev")
    with pytest.raises(StateError, match="nothing to suspend"):
        suspend.suspend(state, "dev")
    lifecycle.start(state, "dev")
    suspend.suspend(state, "dev")
    assert status(state, "dev").state == "suspended"
    assert (files.suspended / vmstate.STATE).read_bytes() == b"QEVM fake state"
    assert (files.suspended / vmstate.STATE).stat().st_mode & 0o777 == 0o600
    suspend.suspend(state, "dev")  # already: nothing happens
    suspend.resume(state, "dev")
    assert status(state, "dev").state == "running"
    assert not files.suspended.exists(), "the saved state is spent once the guest runs on"
    assert any(argv[:2] == ["date", "-u"] for argv in guest.commands), "the clock is set"
    assert _commands(state)[-6:] == [
        "getfd", "migrate-incoming", "query-migrate", "block_resize", "cont", "query-status",
    ]  # fmt: skip
    suspend.resume(state, "dev")  # already running: nothing happens
    lifecycle.quit_instance(state, "dev")
    with pytest.raises(StateError, match="'dev' is not suspended"):
        suspend.resume(state, "dev")


def test_a_state_that_does_not_load_leaves_the_instance_suspended(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vmstate, "connect", lambda *a, **k: _Guest())
    lifecycle.start(state, "dev")
    suspend.suspend(state, "dev")
    monkeypatch.setenv("FAKE_QEMU", "bad-state")
    with pytest.raises(Exception, match="could not load the suspended state"):
        suspend.resume(state, "dev")
    assert status(state, "dev").state == "suspended"
    monkeypatch.delenv("FAKE_QEMU")
    lifecycle.start(state, "dev")  # start of a suspended instance resumes it
    assert status(state, "dev").state == "running"
    lifecycle.quit_instance(state, "dev")


def _image(state: StateDir) -> BaseImage:
    folder = state.root / "cache" / "images" / "debian-12"
    folder.mkdir(parents=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", folder / "disk.qcow2", "64M"])
    return BaseImage(
        name="debian-12", key="k", directory=folder, disk=folder / "disk.qcow2",
        kernel=None, initrd=None, cmdline=None, kind="built", warm_boot=True,
    )  # fmt: skip


def test_a_warm_boot_snapshot_is_made_once_for_a_shape(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warmboot, "SNAPSHOT_MIN_BYTES", 0)
    image = _image(state)
    warm.prepare_shape_warm_boot(state, image, mem_mib=512, cpus=1, accel_mode="tcg")
    snapshots = warmboot.snapshots_of(state, image)
    assert len(snapshots) == 1 and snapshots[0].state_file.read_bytes() == b"QEVM fake state"
    assert snapshots[0].disk.is_file()
    assert not list(snapshots[0].directory.parent.glob(".making-*"))
    assert not list(state.root.rglob("qemu.pid")) or all(
        process.running_pid(p, p.parent) is None for p in state.root.rglob("qemu.pid")
    ), "the snapshot boot's QEMU is gone"
    made = snapshots[0].state_file.stat().st_mtime_ns
    warm.prepare_shape_warm_boot(state, image, mem_mib=512, cpus=1, accel_mode="tcg")
    assert snapshots[0].state_file.stat().st_mtime_ns == made, "made once"


def test_a_snapshot_boot_qemu_refuses_is_a_warning_not_a_failure(
    state: StateDir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(warmboot, "SNAPSHOT_MIN_BYTES", 0)
    monkeypatch.setenv("FAKE_QEMU", "refuse")
    image = _image(state)
    warm.prepare_shape_warm_boot(state, image, mem_mib=512, cpus=1, accel_mode="tcg")
    err = capsys.readouterr().err
    assert "no warm-boot snapshot of debian-12 (QEMU refused the snapshot boot: " in err
    assert "Could not open" in err
    assert warmboot.snapshots_of(state, image) == []


def test_snapshot_later_starts_a_background_job_only_when_one_is_missing(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    monkeypatch.setattr(
        warmboot, "start_in_background", lambda *a: started.append(a) or Path("/log")
    )
    image = _image(state)
    monkeypatch.setattr(warm.images, "find_cached", lambda *a: image)
    inst = load_state(state, "dev")
    warm.snapshot_later(state, inst)
    assert started == [], "an instance without mount slots never starts warm"
    inst.mount_slots = warmboot.MOUNT_SLOTS
    inst.image = warm.image_ref(image)
    warm.snapshot_later(state, inst)
    assert [a[2] for a in started] == [["--mem", "512", "--cpus", "1", "--accel", "tcg"]]


def test_a_snapshot_made_after_a_save_serves_the_instance_shape(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warmboot, "SNAPSHOT_MIN_BYTES", 0)
    monkeypatch.setattr(warmboot, "start_in_background", lambda *a: pytest.fail("made already"))
    image = _image(state)
    monkeypatch.setattr(warm.images, "find_cached", lambda *a: image)
    inst = load_state(state, "dev")
    warm.prepare_warm_boot(state, inst, image)
    assert warmboot.snapshots_of(state, image) == [], "no mount slots: it never starts warm"
    inst.mount_slots, inst.image = warmboot.MOUNT_SLOTS, warm.image_ref(image)
    warm.prepare_warm_boot(state, inst, image)
    [snapshot] = warmboot.snapshots_of(state, image)
    warm.snapshot_later(state, inst)  # its shape has one now: nothing to make

    files = files_of(state, "dev")
    warm.make_overlay(files.disk, snapshot.disk, 8, snapshot)
    info = run(["qemu-img", "info", "-U", files.disk]).stdout
    assert str(snapshot.disk) in info and "64 MiB" in info, "the size the guest saw, for now"
    warm.make_overlay(files.disk, image.disk, 8, None)
    assert "8 GiB" in run(["qemu-img", "info", "-U", files.disk]).stdout

    inst.warm_snapshot = str(snapshot.directory)
    save_state(files, inst)
    warm.discard_unless_used(state, snapshot)
    assert snapshot.directory.is_dir(), "it backs an instance's disk"
    inst.warm_snapshot = None
    save_state(files, inst)
    warm.discard_unless_used(state, snapshot)
    assert not snapshot.directory.exists()


def test_start_applies_new_sizes_and_accelerator_choice(state: StateDir) -> None:
    files = files_of(state, "dev")
    run(["qemu-img", "create", "-q", "-f", "qcow2", files.disk, "8G"])
    lifecycle.start(state, "dev", accel_mode="tcg", resize=lifecycle.Resize(mem_mib=640))
    inst = load_state(state, "dev")
    assert (inst.mem_mib, inst.accel_mode, status(state, "dev").state) == (640, "tcg", "running")
    lifecycle.quit_instance(state, "dev")


def test_delete_of_a_missing_instance_names_the_list(state: StateDir) -> None:
    with pytest.raises(UsageError, match="no instance named 'ghost'") as missing:
        lifecycle.delete(state, "ghost")
    assert "ccloudvm instances" in (missing.value.hint or "")


def test_the_snapshot_image_build_makes_is_the_one_a_plain_create_starts_from(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 2: `image build` snapshots the shape a create with no size flags and
    no mounts gets (its default sizes for this accelerator), so that first create is warm;
    another size finds none (it boots cold and leaves the snapshot to a background job)."""
    from ccloudvm.core.hostinfo import host_user
    from ccloudvm.instance import checks, create
    from ccloudvm.vm import accel

    monkeypatch.setattr(warmboot, "SNAPSHOT_MIN_BYTES", 0)
    monkeypatch.setenv("CCLOUDVM_ACCEL", "tcg")
    image = _image(state)
    warm.prepare_default_warm_boot(state, image)
    [made] = warmboot.snapshots_of(state, image)

    mode = accel.requested_mode(None)
    acc = accel.detect(mode=mode, run_dir=state.run)
    mem, cpus, disk = checks._check_sizes(checks.CreateRequest("debian", "debian-12"), acc.is_kvm)
    files = files_of(state, "plain")
    files.dir.mkdir(parents=True)
    files.seed.write_bytes(b"seed")
    plain = InstanceState(
        name="plain", workload="debian", image=warm.image_ref(image), mem_mib=mem, cpus=cpus,
        disk_gib=disk, host_ip="127.77.0.9", ssh_port=_free_port(),
        guest_user=host_user().guest_name, accel_mode=mode, mount_slots=warmboot.MOUNT_SLOTS,
    )  # fmt: skip
    found = create._warm_snapshot(state, files, plain, image, acc)
    assert found is not None and found.directory == made.directory
    plain.mem_mib += 64
    assert create._warm_snapshot(state, files, plain, image, acc) is None
