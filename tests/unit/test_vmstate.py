"""Saving a guest's state: the QMP conversations against a fake monitor that speaks the real
wire protocol, and what a saved state refuses to load into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ccloudvm.instance import vmstate
from ccloudvm.state.instance_state import InstanceFiles
from tests.unit.test_qmp import FakeMonitor, Refuse

SAVE_ANSWERS: dict[str, Any] = {
    "stop": {},
    "cont": {},
    "blockdev-snapshot-internal-sync": {},
    "blockdev-snapshot-delete-internal-sync": {},
    "migrate-set-parameters": {},
    "getfd": {},
    "migrate": {},
    "query-migrate": {"status": "completed"},
}


def _monitor(tmp_path: Path, **changes: Any) -> tuple[FakeMonitor, InstanceFiles]:
    files = InstanceFiles(tmp_path)
    return FakeMonitor(files.qmp, answers={**SAVE_ANSWERS, **changes}), files


def test_a_snapshot_pauses_snapshots_the_disk_saves_and_runs_on(tmp_path: Path) -> None:
    fake, files = _monitor(tmp_path)
    try:
        vmstate.save(files, tmp_path / "state.bin", disk_snapshot="ccloudvm-s1", then="cont")
    finally:
        fake.close()
    assert fake.commands == [
        "stop", "blockdev-snapshot-internal-sync", "migrate-set-parameters", "getfd",
        "migrate", "query-migrate", "cont",
    ]  # fmt: skip
    assert (tmp_path / "state.bin").stat().st_mode & 0o777 == 0o600


def test_suspend_saves_without_a_disk_snapshot_and_quits_qemu(tmp_path: Path) -> None:
    fake, files = _monitor(tmp_path)
    try:
        vmstate.save(files, tmp_path / "state.bin", disk_snapshot=None, then="quit")
    finally:
        fake.close()
    assert fake.commands == [
        "stop", "migrate-set-parameters", "getfd", "migrate", "query-migrate", "quit",
    ]  # fmt: skip


def test_a_refused_migration_runs_the_guest_on_and_drops_the_disk_snapshot(
    tmp_path: Path,
) -> None:
    blocker = (
        "Migration is disabled when VirtFS export path '/srv' is mounted in the guest "
        "using mount_tag 'ccvm0'"
    )
    fake, files = _monitor(tmp_path, migrate=Refuse(blocker))
    try:
        with pytest.raises(vmstate.SaveFailed, match="Migration is disabled when VirtFS"):
            vmstate.save(files, tmp_path / "state.bin", disk_snapshot="ccloudvm-s1", then="cont")
    finally:
        fake.close()
    assert fake.commands[-2:] == ["blockdev-snapshot-delete-internal-sync", "cont"]


def test_a_failed_migration_says_why_and_resumes_the_guest(tmp_path: Path) -> None:
    failed = {"status": "failed", "error-desc": "No space left on device"}
    fake, files = _monitor(tmp_path, **{"query-migrate": failed})
    try:
        with pytest.raises(vmstate.SaveFailed, match="No space left on device"):
            vmstate.save(files, tmp_path / "state.bin", disk_snapshot=None, then="quit")
    finally:
        fake.close()
    assert fake.commands[-1] == "cont" and "quit" not in fake.commands


def test_no_monitor_is_a_one_line_save_failure(tmp_path: Path) -> None:
    with pytest.raises(vmstate.SaveFailed, match="did not answer"):
        vmstate.save(
            InstanceFiles(tmp_path), tmp_path / "state.bin", disk_snapshot=None, then="quit"
        )


SAVED = {
    "qemu": "QEMU emulator version 7.2.22",
    "shape": "abc",
    "accel": "tcg",
    "image": {"key": "k", "disk": "1:2", "kernel": "3:4", "initrd": "5:6"},
}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"qemu": "QEMU emulator version 8.0.0"}, "QEMU changed since it was suspended (QEMU emulator version 7.2.22 -> QEMU emulator version 8.0.0)"),
        ({"image": {**SAVED["image"], "kernel": "3:5"}}, "its image changed since it was suspended"),
        ({"accel": "kvm"}, "its acceleration changed since it was suspended (tcg -> kvm)"),
        ({"shape": "def"}, "its machine (memory, CPUs or devices) changed since it was suspended"),
    ],
)  # fmt: skip
def test_a_changed_qemu_image_or_machine_is_named(change: dict[str, Any], words: str) -> None:
    assert vmstate.mismatch(SAVED, {**SAVED, **change}, "it was suspended") == words


def test_an_unchanged_host_loads_the_state() -> None:
    assert vmstate.mismatch(SAVED, dict(SAVED), "it was suspended") is None
