"""Instance checks that need no VM: drive strings, and what a finished boot must show."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ccloudvm.core.specs import DriveSpec
from ccloudvm.instance import boot
from ccloudvm.state.instance_state import ImageRef, InstanceState, files_of, save_state
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import ready


@pytest.mark.parametrize(
    ("drive", "path"),
    [
        ("/data/disk.img", "/data/disk.img"),
        ("/data/disk.img,format=raw", "/data/disk.img"),
        ("/data/a,,b.img,format=qcow2,cache=none", "/data/a,b.img"),
        ("/data/end,,", "/data/end,"),
    ],
)
def test_drive_path_understands_qemus_comma_escape(drive: str, path: str) -> None:
    assert DriveSpec.parse(drive).path == Path(path)
    assert DriveSpec.parse(str(DriveSpec.parse(drive))) == DriveSpec.parse(drive)  # as recorded


def test_a_drive_keeps_its_format_and_options_apart() -> None:
    assert DriveSpec.parse("/d/a,,b.img,cache=none,format=raw") == DriveSpec(
        Path("/d/a,b.img"), "raw", "cache=none"
    )
    assert DriveSpec.parse("/d/x.img") == DriveSpec(Path("/d/x.img"), "", "")  # QEMU probes it
    assert DriveSpec.parse("~/x.img").path == Path.home() / "x.img"


class _Target:
    """Stands in for the guest's SSH connection: answers `cat result.json`."""

    def __init__(self, result_json: str) -> None:
        self.result_json = result_json
        self.closed = False

    def run_capture(self, argv: list[str]) -> tuple[int, str]:
        assert argv == ["cat", "/run/cloud-init/result.json"]
        return 0, self.result_json

    def close(self) -> None:
        self.closed = True


def _instance(tmp_path: Path) -> tuple[StateDir, Any, InstanceState]:
    state = StateDir(tmp_path)
    inst = InstanceState(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022,
        guest_user="ccloudvm",
    )  # fmt: skip
    files = files_of(state, "dev")
    files.dir.mkdir(parents=True)
    save_state(files, inst)
    files.serial.write_text("[  1.0] booting\n[  9.9] cloud-init: module runcmd failed\n")
    return state, files, inst


def _fake_boot(monkeypatch: pytest.MonkeyPatch, target: _Target) -> None:
    """The boot itself is faked: the console marker is there, SSH reaches `target`."""
    monkeypatch.setattr(ready, "wait_for_marker", lambda *a, **k: None)
    monkeypatch.setattr(boot, "ssh_target_for", lambda *a, **k: target)
    monkeypatch.setattr(boot.ui, "spinner", lambda *a, **k: _NullStatus())


def test_cloud_init_errors_fail_the_boot_with_the_console_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, files, inst = _instance(tmp_path)
    target = _Target('{"v1": {"errors": ["(\'scripts_user\', RuntimeError(\'runcmd failed\'))"]}}')
    _fake_boot(monkeypatch, target)
    with pytest.raises(ready.BootFailed) as failed:
        boot.wait_ready(state, files, inst, timeout=5)
    message = str(failed.value)
    assert "cloud-init reported errors in 'dev'" in message and "scripts_user" in message
    assert "module runcmd failed" in message, "the console's last lines belong in the error"
    assert "ccloudvm delete dev" in (failed.value.hint or "")
    assert target.closed


def test_a_clean_boot_returns_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, files, inst = _instance(tmp_path)
    target = _Target('{"v1": {"errors": []}}')
    _fake_boot(monkeypatch, target)
    assert boot.wait_ready(state, files, inst, timeout=5) is target
    assert not target.closed


class _NullStatus(SimpleNamespace):
    def __enter__(self) -> _NullStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, text: str) -> None:
        return None
