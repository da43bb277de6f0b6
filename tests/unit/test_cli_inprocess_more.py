"""`ccloudvm version`, `instances` and `status` in-process through the real entry point,
with a temporary CCLOUDVM_HOME and a stand-in qemu-system-x86_64 on PATH: what a user
reads and the exit status (the subprocess tests elsewhere are not measured by coverage)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ccloudvm.cli.main import main
from ccloudvm.state.instance_state import ImageRef, InstanceFiles, InstanceState, save_state
from ccloudvm.state.paths import StateDir


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    root = tmp_path / "state"
    monkeypatch.setenv("CCLOUDVM_HOME", str(root))
    monkeypatch.setenv("CCLOUDVM_ACCEL", "tcg")  # no probe of this host's KVM
    return StateDir(root)


def _run(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "qemu-system-x86_64"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return exe


def _instance(state: StateDir, name: str, **overrides: object) -> None:
    files = InstanceFiles(state.instance_dir(name))
    files.dir.mkdir(parents=True)
    values: dict[str, object] = dict(
        name=name, workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=1024, cpus=2, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022, guest_user="u",
    )  # fmt: skip
    values.update(overrides)
    save_state(files, InstanceState(**values))  # type: ignore[arg-type]


def test_version_names_qemu_acceleration_and_state(
    home: StateDir,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    exe = _qemu(tmp_path, monkeypatch, 'echo "QEMU emulator version 8.2.2 (Debian)"')
    assert _run("version") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"qemu          8.2.2 (Debian) ({exe})"
    assert lines[2] == (
        "acceleration  TCG: software emulation chosen by the user (mode tcg (from $CCLOUDVM_ACCEL))"
    )
    assert lines[3] == f"state         {home.root} (not made yet)"


def test_version_json_of_a_qemu_that_says_nothing(
    home: StateDir,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _qemu(tmp_path, monkeypatch, "exit 4")
    home.root.mkdir(parents=True)
    assert _run("version", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["qemu"] == "unknown (exit status 4)"
    assert (data["accel"], data["nested"], data["state_dir_exists"]) == ("tcg", False, True)


def test_instances_with_none_says_how_to_make_one(
    home: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("instances") == 0
    assert "no instances (create one with 'ccloudvm create debian')" in capsys.readouterr().err


def test_instances_lists_each_with_its_state_and_driver(
    home: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    _instance(home, "one", desired="stopped")
    _instance(home, "two", desired="stopped", driver="libvirt", connect="qemu+ssh://u@far/system")
    _instance(home, "three", desired="running")  # QEMU is gone though nobody stopped it
    broken = home.instance_dir("zz-broken")
    broken.mkdir(parents=True)
    (broken / "state.json").write_text("{not json")
    assert _run("instances") == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["one"].split()[1] == "stopped" and rows["one"].rstrip().endswith("qemu")
    assert rows["two"].rstrip().endswith("libvirt@far")
    assert rows["three"].split()[1] == "crashed"
    assert "1024 MiB" in rows["one"] and "u@127.77.0.2:10022" in rows["one"]
    assert "zz-broken" in err  # named, and the others still listed
    assert _run("instances", "-q") == 0
    assert capsys.readouterr().out.split() == ["one", "three", "two", "zz-broken"]


def test_instances_quiet_takes_no_format(
    home: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("instances", "-q", "--json") == 2
    assert "-q prints names only; it takes no --format or --json" in capsys.readouterr().err


def test_status_of_a_crashed_instance_says_how_to_boot_it(
    home: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    _instance(home, "dev", desired="running")
    assert _run("status", "dev") == 0
    out, err = capsys.readouterr()
    assert "crashed" in out
    assert "QEMU is gone although nobody stopped it; 'ccloudvm start dev' boots it again" in err
    assert _run("status", "dev", "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "crashed"
