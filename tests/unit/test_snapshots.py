"""Snapshots and suspend of instances without a running QEMU: the real qemu-img and
qemu-io on a real qcow2 overlay, the state a user sees, and one-line refusals that
leave the instance as it was. (The running side is tests/e2e/test_snapshots.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ccloudvm.core.errors import NotFoundError, StateError, UsageError
from ccloudvm.instance import boot, snapshots, suspend, vmstate
from ccloudvm.instance import lifecycle as instance
from ccloudvm.instance.status import status
from ccloudvm.state.instance_state import (
    ImageRef,
    InstanceFiles,
    InstanceState,
    files_of,
    instance_lock,
    load_state,
    save_state,
)
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import machine
from ccloudvm.vm.accel import Acceleration


@pytest.fixture
def stopped(tmp_path: Path) -> tuple[StateDir, InstanceFiles]:
    """A stopped instance with a real (sparse) 1 GiB qcow2 disk."""
    state = StateDir.from_env()
    files = files_of(state, "dev")
    files.dir.mkdir(parents=True)
    inst = InstanceState(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", str(tmp_path / "base")),
        mem_mib=1024, cpus=1, disk_gib=1, host_ip="127.77.0.2", ssh_port=10022,
        guest_user="ccloudvm", desired="stopped",
    )  # fmt: skip
    save_state(files, inst)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", files.disk, "1G"], check=True)
    return state, files


def _write(disk: Path, pattern: int) -> None:
    subprocess.run(["qemu-io", "-c", f"write -P {pattern} 0 64k", disk], check=True,
                   capture_output=True)  # fmt: skip


def _holds(disk: Path, pattern: int) -> bool:
    result = subprocess.run(["qemu-io", "-c", f"read -P {pattern} 0 64k", disk],
                            capture_output=True, text=True, check=False)  # fmt: skip
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout


def _internal(disk: Path) -> list[str]:
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", disk], capture_output=True,
                       text=True, check=True).stdout
    )  # fmt: skip
    return [s["name"] for s in info.get("snapshots", [])]


def _suspend_by_hand(files: InstanceFiles, fingerprint: dict[str, Any]) -> None:
    """What `suspend` leaves: the state and its record; QEMU gone."""
    files.suspended.mkdir()
    (files.suspended / vmstate.STATE).write_bytes(b"QEVM" + b"\0" * 1024)
    vmstate.write_meta(
        files.suspended / suspend.META,
        {"format": suspend.FORMAT, "fingerprint": fingerprint, "mounts": [], "suspended": 1.0},
    )


def test_a_stopped_instance_is_snapshotted_disk_only_and_restored(
    stopped: tuple[StateDir, InstanceFiles],
) -> None:
    state, files = stopped
    _write(files.disk, 0xAA)
    assert snapshots.save(state, "dev", "before") == "before"
    assert _internal(files.disk) == ["ccloudvm-before"]
    _write(files.disk, 0x55)
    [row] = snapshots.list_snapshots(state, "dev")
    assert (row["name"], row["kind"], row["state_mib"]) == ("before", "disk", 0)

    snapshots.restore(state, "dev", "before")
    assert _holds(files.disk, 0xAA)
    assert status(state, "dev").state == "stopped"

    snapshots.remove(state, "dev", "before")
    assert _internal(files.disk) == [] and snapshots.list_snapshots(state, "dev") == []


def test_a_disk_grown_since_the_snapshot_keeps_its_size_on_restore(
    stopped: tuple[StateDir, InstanceFiles],
) -> None:
    state, files = stopped
    snapshots.save(state, "dev", "small")
    subprocess.run(["qemu-img", "resize", "-q", files.disk, "2G"], check=True)
    inst = load_state(state, "dev")
    inst.disk_gib = 2  # what start --disk 2G records
    save_state(files, inst)
    snapshots.restore(state, "dev", "small")
    info = subprocess.run(["qemu-img", "info", "--output=json", files.disk],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert json.loads(info)["virtual-size"] == 2 * 2**30


def test_restore_without_a_name_takes_the_newest(stopped: tuple[StateDir, InstanceFiles]) -> None:
    state, files = stopped
    _write(files.disk, 1)
    snapshots.save(state, "dev", "one")
    _write(files.disk, 2)
    snapshots.save(state, "dev", "two")
    _write(files.disk, 3)
    assert snapshots.restore(state, "dev") == "two"
    assert _holds(files.disk, 2)


def test_a_missing_snapshot_is_refused_with_the_names_there_are(
    stopped: tuple[StateDir, InstanceFiles],
) -> None:
    state, files = stopped
    with pytest.raises(NotFoundError, match="has no snapshots"):
        snapshots.restore(state, "dev")
    snapshots.save(state, "dev", "one")
    _write(files.disk, 7)
    with pytest.raises(NotFoundError, match="'dev' has no snapshot 'nope'") as info:
        snapshots.restore(state, "dev", "nope")
    assert info.value.hint == "its snapshots: one"
    assert _holds(files.disk, 7), "a refused restore must leave the disk alone"


def test_a_name_taken_twice_is_refused(stopped: tuple[StateDir, InstanceFiles]) -> None:
    state, _ = stopped
    snapshots.save(state, "dev", "one")
    with pytest.raises(UsageError, match="already has a snapshot 'one'"):
        snapshots.save(state, "dev", "one")


@pytest.mark.parametrize("snap", ["-x", ".hidden", "a/b", "a" * 64, "sp ace"])
def test_odd_snapshot_names_are_refused(stopped: tuple[StateDir, InstanceFiles], snap: str) -> None:
    state, files = stopped
    with pytest.raises(UsageError, match="invalid snapshot name"):
        snapshots.save(state, "dev", snap)
    assert not files.snapshots.exists() or not list(files.snapshots.iterdir())


def test_a_default_name_is_the_date_and_time() -> None:
    assert snapshots.default_name(0).startswith("snap-19")


def test_a_busy_instance_is_refused_at_once_and_left_alone(
    stopped: tuple[StateDir, InstanceFiles],
) -> None:
    state, files = stopped
    with instance_lock(files):  # another ccloudvm command at work on it
        for action in (
            lambda: snapshots.save(state, "dev", "one"),
            lambda: suspend.suspend(state, "dev"),
            lambda: suspend.resume(state, "dev"),
        ):
            with pytest.raises(
                StateError, match="another ccloudvm command is still working on 'dev'"
            ):
                action()
    assert _internal(files.disk) == [] and not files.snapshots.exists()


def test_a_suspended_instance_shows_suspended_and_stop_discards_its_state(
    stopped: tuple[StateDir, InstanceFiles],
) -> None:
    state, files = stopped
    _suspend_by_hand(files, {})
    assert status(state, "dev").state == "suspended"
    instance.stop(state, "dev")
    assert status(state, "dev").state == "stopped"
    assert not files.suspended.exists()


def test_a_suspended_instance_is_deleted_with_its_state_and_snapshots(
    stopped: tuple[StateDir, InstanceFiles],
) -> None:
    """Issue 11 items 7 and 8: delete of a suspended instance works, and an instance's
    snapshots go with it."""
    state, files = stopped
    snapshots.save(state, "dev", "kept")
    _suspend_by_hand(files, {})
    assert status(state, "dev").state == "suspended"
    instance.delete(state, "dev")
    assert not files.dir.exists()
    with pytest.raises(UsageError, match="no instance named 'dev'"):
        snapshots.list_snapshots(state, "dev")


def test_resume_refuses_a_changed_qemu_and_leaves_the_instance_suspended(
    stopped: tuple[StateDir, InstanceFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, files = stopped
    saved = {"qemu": "QEMU emulator version 7.2.0", "shape": "s", "accel": "tcg", "image": {}}
    _suspend_by_hand(files, saved)
    inst = load_state(state, "dev")
    inst.desired = "suspended"
    save_state(files, inst)
    before = files.state.read_text()
    now = {**saved, "qemu": "QEMU emulator version 8.2.0"}
    monkeypatch.setattr(vmstate, "fingerprint", lambda *_: now)
    for action in (suspend.resume, instance.start):
        with pytest.raises(StateError, match=r"cannot resume 'dev': QEMU changed since it was suspended \(QEMU emulator version 7.2.0 -> QEMU emulator version 8.2.0\)") as info:  # fmt: skip
            action(state, "dev")
        assert "'ccloudvm stop dev' discards the saved state" in str(info.value.hint)
    assert files.state.read_text() == before
    assert status(state, "dev").state == "suspended"


def test_a_snapshot_of_a_suspended_instance_keeps_its_memory(
    stopped: tuple[StateDir, InstanceFiles],
) -> None:
    state, files = stopped
    _suspend_by_hand(files, {"qemu": "q"})
    snapshots.save(state, "dev", "asleep")
    [row] = snapshots.list_snapshots(state, "dev")
    assert row["kind"] == "memory+disk"
    copied = files.snapshots / "asleep" / vmstate.STATE
    assert copied.read_bytes() == (files.suspended / vmstate.STATE).read_bytes()
    assert status(state, "dev").state == "suspended", "a snapshot leaves it suspended"


def test_resume_of_an_instance_that_is_not_suspended_says_how_to_start_it(
    stopped: tuple[StateDir, InstanceFiles],
) -> None:
    state, _ = stopped
    with pytest.raises(StateError, match="'dev' is not suspended") as info:
        suspend.resume(state, "dev")
    assert info.value.hint == "boot it with 'ccloudvm start dev'"
    with pytest.raises(StateError, match="'dev' is not running, so there is nothing to suspend"):
        suspend.suspend(state, "dev")


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["snapshot", "restore", "dev", "nope"], 2, "error: 'dev' has no snapshot 'nope'"),
        (["snapshot", "rm", "dev", "nope"], 2, "error: 'dev' has no snapshot 'nope'"),
        (["snapshot", "save", "dev", "a/b"], 2, "error: invalid snapshot name 'a/b'"),
        (["snapshot", "list", "ghost"], 2, "error: no instance named 'ghost'"),
        (["suspend", "dev"], 1, "error: 'dev' is not running"),
        (["resume", "ghost"], 2, "error: no instance named 'ghost'"),
    ],
)
def test_bad_input_is_one_line_without_traceback(
    stopped: tuple[StateDir, InstanceFiles], argv: list[str], code: int, needle: str
) -> None:
    result = subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", *argv], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        line for line in result.stderr.splitlines() if line.startswith("error:")
    ]
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_suspended_instance_is_not_resized_by_start(
    stopped: tuple[StateDir, InstanceFiles],
) -> None:
    state, files = stopped
    _suspend_by_hand(files, {})
    before = files.state.read_text()
    with pytest.raises(StateError, match="'dev' is suspended; its sizes change only while"):
        instance.start(state, "dev", resize=instance.Resize(mem_mib=2048))
    assert files.state.read_text() == before and suspend.is_suspended(files)


def test_a_start_on_another_ssh_port_pins_the_host_key_there(
    stopped: tuple[StateDir, InstanceFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another VM took the SSH port while this one was suspended or stopped: the new port
    gets the pinned host key, or system ssh (connect, run) refuses the guest."""
    state, files = stopped
    files.host_key_pub.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q\n"
    )
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    inst = load_state(state, "dev")
    inst.host_ip, inst.ssh_port = "127.0.0.1", taken.getsockname()[1]
    # QEMU itself stands in: the driver "starts" it (the seam is ccloudvm.vm.machine).
    monkeypatch.setattr(machine, "require_tool", lambda name: name)
    monkeypatch.setattr(
        machine, "run", lambda argv, check=True: subprocess.CompletedProcess(argv, 0, "", "")
    )
    try:
        boot.launch(state, files, inst, Acceleration("tcg", False, "test"))
    finally:
        taken.close()
    assert f"[127.0.0.1]:{inst.ssh_port} ssh-ed25519 " in files.known_hosts.read_text()
    assert load_state(state, "dev").ssh_port == inst.ssh_port
