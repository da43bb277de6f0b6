"""The create pipeline's branches that a real VM seldom takes: the warm-boot choice and its
cold fallback, the undo of a failed or interrupted create, a disk smaller than the image.

QEMU, the overlay disk and SSH readiness are the outside world here: the steps that
touch them (ccloudvm.instance.boot / warm) are replaced by recorders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.core.hostinfo import host_user
from ccloudvm.images.catalog import BaseImage
from ccloudvm.instance import create
from ccloudvm.instance.checks import CreateRequest
from ccloudvm.state.instance_state import ImageRef, InstanceFiles, InstanceState, files_of
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import warmboot


def _base(tmp_path: Path) -> BaseImage:
    disk = tmp_path / "base.qcow2"
    disk.write_bytes(b"")
    return BaseImage(
        name="debian-12", key="k", directory=tmp_path, disk=disk, kernel=None, initrd=None,
        cmdline=None, kind="built", warm_boot=True,
    )  # fmt: skip


def _instance(state: StateDir, slots: int = 4) -> tuple[InstanceFiles, InstanceState]:
    files = files_of(state, "dev")
    files.dir.mkdir(parents=True)
    inst = InstanceState(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=1024, cpus=2, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022,
        guest_user="u", mount_slots=slots,
    )  # fmt: skip
    return files, inst


class Recorder:
    """Stands in for boot and warm: records each call; launch may fail warm."""

    def __init__(self, warm_fails: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.warm_fails = warm_fails

    def launch(self, _state: Any, _files: Any, _inst: Any, _acc: Any, restore: Any = None) -> None:
        self.calls.append(("launch", restore))
        if restore is not None and self.warm_fails:
            raise warmboot.WarmBootFailed("the state did not load")

    def make_overlay(self, _disk: Path, backing: Path, _gib: int, snapshot: Any) -> None:
        self.calls.append(("overlay", (backing.name, snapshot)))


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(create.boot, "acceleration", lambda *_a: "tcg")
    monkeypatch.setattr(create.boot, "launch", recorder.launch)
    monkeypatch.setattr(create.boot, "force_off", lambda _f: recorder.calls.append(("off", None)))
    monkeypatch.setattr(create.warm, "make_overlay", recorder.make_overlay)
    monkeypatch.setattr(
        create.warm,
        "discard_unless_used",
        lambda _s, snap: recorder.calls.append(("discard", snap)),
    )
    return recorder


def _snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> warmboot.Snapshot:
    snap = warmboot.Snapshot(tmp_path / "snap")
    monkeypatch.setattr(create, "_warm_snapshot", lambda *_a: snap)
    return snap


def test_no_snapshot_boots_cold_once(
    tmp_path: Path, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "home")
    files, inst = _instance(state)
    monkeypatch.setattr(create, "_warm_snapshot", lambda *_a: None)
    create._first_boot(state, files, inst, _base(tmp_path))
    assert rec.calls == [("overlay", ("base.qcow2", None)), ("launch", None)]
    assert inst.warm_snapshot is None
    assert files.state.exists()  # the record is written before QEMU starts


def test_a_snapshot_starts_warm(
    tmp_path: Path, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "home")
    files, inst = _instance(state)
    snap = _snapshot(tmp_path, monkeypatch)
    create._first_boot(state, files, inst, _base(tmp_path))
    assert rec.calls == [("overlay", (warmboot.DISK, snap)), ("launch", snap)]
    assert inst.warm_snapshot == str(snap.directory)


def test_a_snapshot_that_fails_to_load_falls_back_to_a_cold_boot(
    tmp_path: Path,
    rec: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = StateDir(tmp_path / "home")
    files, inst = _instance(state)
    snap = _snapshot(tmp_path, monkeypatch)
    rec.warm_fails = True
    create._first_boot(state, files, inst, _base(tmp_path))
    assert rec.calls == [
        ("overlay", (warmboot.DISK, snap)),
        ("launch", snap),
        ("off", None),  # the QEMU that failed to load goes first
        ("overlay", ("base.qcow2", None)),  # a fresh overlay on the image itself
        ("discard", snap),
        ("launch", None),
    ]
    assert inst.warm_snapshot is None
    err = capsys.readouterr().err
    assert (
        "could not start from the warm-boot snapshot (the state did not load); booting cold" in err
    )


def test_warm_snapshot_none_without_slots_or_when_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "home")
    files, inst = _instance(state, slots=0)
    assert create._warm_snapshot(state, files, inst, _base(tmp_path), "tcg") is None  # type: ignore[arg-type]
    inst.mount_slots = 4
    monkeypatch.setattr(warmboot, "enabled", lambda: False)
    assert create._warm_snapshot(state, files, inst, _base(tmp_path), "tcg") is None  # type: ignore[arg-type]


def test_warm_snapshot_says_why_it_boots_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StateDir(tmp_path / "home")
    files, inst = _instance(state)
    monkeypatch.setattr(warmboot, "enabled", lambda: True)
    monkeypatch.setattr(warmboot, "pad_seed", lambda _seed: False)
    assert create._warm_snapshot(state, files, inst, _base(tmp_path), "tcg") is None  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert "cloud-init seed is too big for a warm boot; booting cold" in out.out + out.err

    monkeypatch.setattr(warmboot, "pad_seed", lambda _seed: True)
    monkeypatch.setattr(create.boot, "machine_config", lambda *_a: "config")
    monkeypatch.setattr(warmboot, "find_snapshot", lambda *_a: None)
    assert create._warm_snapshot(state, files, inst, _base(tmp_path), "tcg") is None  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert (
        "no warm-boot snapshot of debian-12 for 1024 MiB, 2 vCPUs yet; booting cold"
        in out.out + out.err
    )

    found = warmboot.Snapshot(tmp_path / "snap")
    monkeypatch.setattr(warmboot, "find_snapshot", lambda *_a: found)
    assert create._warm_snapshot(state, files, inst, _base(tmp_path), "tcg") is found  # type: ignore[arg-type]


def test_a_disk_smaller_than_the_image_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "home")
    monkeypatch.setattr(create, "_disk_virtual_size_gib", lambda _disk: 10.0)
    checked = create._Checked("dev", host_user(), 1024, 2, 4, [])
    req = CreateRequest(
        workload="debian", image="debian-12", name="dev", mem_mib=1024, cpus=2, disk_gib=4
    )
    with pytest.raises(
        UsageError, match=r"--disk 4 GiB is smaller than the image debian-12 \(10.0 GiB\)"
    ):
        create._sized_for(state, req, checked, _base(tmp_path))


def _make_until(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: BaseException, at: str
) -> tuple[StateDir, list[str]]:
    """Run create._make with the image, identity, boot and readiness steps replaced, the
    step `at` raising `fails`; return the state and the calls made."""
    state = StateDir(tmp_path / "home")
    state.ensure()
    calls: list[str] = []
    base = _base(tmp_path)

    def step(name: str, result: Any = None) -> Any:
        def run(*_a: Any, **_k: Any) -> Any:
            calls.append(name)
            if name == at:
                raise fails
            return result

        return run

    monkeypatch.setattr(create.images, "ensure_image", step("image", base))
    monkeypatch.setattr(create, "_sized_for", lambda _s, _r, checked, _b: checked)
    monkeypatch.setattr(create, "_write_identity", step("identity"))
    monkeypatch.setattr(create, "_first_boot", step("boot"))
    monkeypatch.setattr(create, "_discard_machine", step("discard machine"))
    monkeypatch.setattr(create.boot, "wait_ready", step("ready", "target"))
    req = CreateRequest(
        workload="debian", image="debian-12", name="dev", mem_mib=1024, cpus=2, disk_gib=8
    )
    checked = create._Checked("dev", host_user(), 1024, 2, 8, [])
    with pytest.raises(type(fails)):
        create._make(state, req, checked)
    return state, calls


def test_a_failure_before_the_machine_starts_removes_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, calls = _make_until(tmp_path, monkeypatch, OSError("seed failed"), "identity")
    assert calls == ["image", "identity"]
    assert not state.instance_dir("dev").exists()


def test_a_guest_that_is_not_ready_stays_for_inspection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, calls = _make_until(tmp_path, monkeypatch, TimeoutError("no ssh"), "ready")
    assert calls == ["image", "identity", "boot", "ready"]  # no discard
    assert state.instance_dir("dev").is_dir()  # for `logs`, `connect`; `delete` removes it


def test_an_interrupted_create_unwinds_the_machine_and_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, calls = _make_until(tmp_path, monkeypatch, KeyboardInterrupt(), "ready")
    assert calls == ["image", "identity", "boot", "ready", "discard machine"]
    assert not state.instance_dir("dev").exists()


def test_the_tcg_warning_is_printed_once_per_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 10: however many machines one command starts (a create's snapshot
    boot and its own, `start a b c`), KVM's absence is said once; never when TCG was asked
    for."""
    from ccloudvm.instance import boot
    from ccloudvm.vm import accel

    monkeypatch.setattr(boot, "_warned_tcg", [])
    tcg = accel.Acceleration("tcg", False, "no /dev/kvm")
    monkeypatch.setattr(boot.accel, "detect", lambda **_k: tcg)
    state = StateDir(tmp_path / "home")
    _, inst = _instance(state)
    inst.accel_mode = "tcg"
    assert boot.acceleration(state, inst) is tcg
    assert capsys.readouterr().err == "", "TCG asked for: nothing to warn about"
    inst.accel_mode = "auto"
    for _ in range(3):
        assert boot.acceleration(state, inst) is tcg
    err = capsys.readouterr().err
    assert err.count("warning: KVM is not usable (no /dev/kvm); using software emulation") == 1
    assert err.count("\n") == 1
