"""Resizing a stopped instance (issue 11 item 6): checked first, the disk only grows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.instance import lifecycle as instance
from ccloudvm.state.instance_state import (
    ImageRef,
    InstanceFiles,
    InstanceState,
    load_state,
    save_state,
)
from ccloudvm.state.paths import StateDir


def _stopped(tmp_path: Path) -> tuple[StateDir, InstanceFiles, InstanceState]:
    state = StateDir(tmp_path)
    files = InstanceFiles(state.instance_dir("dev"))
    files.dir.mkdir(parents=True)
    subprocess.run(  # noqa: S603,S607 - fixed argv
        ["qemu-img", "create", "-q", "-f", "qcow2", str(files.disk), "8G"], check=True
    )
    inst = InstanceState(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10023,
        guest_user="u", desired="stopped",
    )  # fmt: skip
    save_state(files, inst)
    return state, files, inst


def _virtual_gib(disk: Path) -> float:
    info = json.loads(
        subprocess.run(  # noqa: S603,S607 - fixed argv
            ["qemu-img", "info", "--output=json", str(disk)],
            capture_output=True, check=True, text=True,
        ).stdout
    )  # fmt: skip
    return int(info["virtual-size"]) / 2**30


def test_growing_keeps_the_new_sizes(tmp_path: Path) -> None:
    state, files, inst = _stopped(tmp_path)
    instance._resize(files, inst, instance.Resize(mem_mib=1536, cpus=2, disk_gib=10))
    assert _virtual_gib(files.disk) == 10
    saved = load_state(state, "dev")
    assert (saved.mem_mib, saved.cpus, saved.disk_gib) == (1536, 2, 10)


@pytest.mark.parametrize(
    ("resize", "problem"),
    [
        (instance.Resize(disk_gib=4), "only grows"),
        (instance.Resize(mem_mib=10**9), "--mem"),
        (instance.Resize(cpus=10**4), "--cpus"),
    ],
)
def test_a_bad_size_changes_nothing(tmp_path: Path, resize: instance.Resize, problem: str) -> None:
    state, files, inst = _stopped(tmp_path)
    with pytest.raises(UsageError, match=problem):
        instance._resize(files, inst, resize)
    assert _virtual_gib(files.disk) == 8
    saved = load_state(state, "dev")
    assert (saved.mem_mib, saved.cpus, saved.disk_gib) == (1024, 1, 8)


def test_no_resize_is_falsy() -> None:
    assert not instance.Resize() and instance.Resize(cpus=2)
