"""A running instance's state (memory and devices) saved to a file and loaded back: what
suspend/resume (ccloudvm.instance.suspend) and snapshots (ccloudvm.instance.snapshots) share.

Saving is QEMU's migration to a file, as warm boot does (ccloudvm.vm.warmboot): the guest is
paused, `migrate` writes its state to a file descriptor, then QEMU quits (suspend) or the
guest runs on (a snapshot, which also takes a qcow2 internal snapshot of the disk while
paused). Loading starts a QEMU with the same command line and `-incoming defer` and feeds
it the file.

Two things stand in the way, and the guest side of both is handled here over SSH:
- QEMU refuses to migrate while a 9p share is mounted in the guest ("Migration is
  disabled when VirtFS export path ... is mounted"); the shares are unmounted before the
  save and mounted again after it (and after every load).
- The guest's clock stands still while it is not running; after a load it is set to the
  host's time.

A saved state loads only into the same QEMU with the same machine (memory, CPUs,
acceleration, devices) and the same kernel: `fingerprint` records those, `mismatch`
says what changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError, StateError
from ccloudvm.instance import boot
from ccloudvm.remote.ssh import SSHTarget
from ccloudvm.state.instance_state import InstanceFiles, InstanceState, instance_lock
from ccloudvm.state.paths import StateDir
from ccloudvm.vm.machine import Machine

STATE = "state.bin"
SAVE_TIMEOUT = 900.0  # a large guest's memory under emulation takes its time
BUSY_WAIT = 0.0  # these commands refuse a busy instance instead of queueing behind it
_FD_NAME = "vmstate"


class SaveFailed(CcloudvmError):
    """QEMU could not save the guest's state; the guest runs on as before."""


def locked(files: InstanceFiles) -> contextlib.AbstractContextManager[None]:
    """The instance's lock, refused at once (with a one-line error) when another command
    holds it."""
    return instance_lock(files, timeout=BUSY_WAIT)


# ---------------------------------------------------------------- what must not change


def fingerprint(state: StateDir, files: InstanceFiles, inst: InstanceState) -> dict[str, Any]:
    """What a saved state depends on: the QEMU, the machine as the guest sees it, and the
    image's files (the kernel is loaded from the host on every start)."""
    from ccloudvm.core.proc import require_tool, run
    from ccloudvm.vm import warmboot

    qemu_bin = require_tool("qemu-system-x86_64")
    version = run([qemu_bin, "--version"]).stdout.splitlines()[0]
    acc = boot.acceleration(state, inst)
    machine = boot.machine_config(state, files, inst, acc)
    return {
        "qemu": version,
        "shape": warmboot.shape_key(machine, version),
        "accel": acc.accel,
        "image": image_fingerprint(inst),
    }


def image_fingerprint(inst: InstanceState) -> dict[str, str]:
    def stamp(path: str | None) -> str:
        if not path:
            return "-"
        try:
            info = os.stat(path)
        except OSError:
            return "missing"
        return f"{info.st_size}:{info.st_mtime_ns}"

    image = inst.image
    return {
        "key": image.key,
        "disk": stamp(image.disk),
        "kernel": stamp(image.kernel),
        "initrd": stamp(image.initrd),
    }


def mismatch(saved: dict[str, Any], now: dict[str, Any], since: str) -> str | None:
    """What changed between a saved state's fingerprint and now, in words, or None."""
    if saved.get("qemu") != now.get("qemu"):
        return f"QEMU changed since {since} ({saved.get('qemu')!s} -> {now.get('qemu')!s})"
    if saved.get("image") != now.get("image"):
        return f"its image changed since {since}"
    if saved.get("accel") != now.get("accel"):
        return (
            f"its acceleration changed since {since} ({saved.get('accel')} -> {now.get('accel')})"
        )
    if saved.get("shape") != now.get("shape"):
        return f"its machine (memory, CPUs or devices) changed since {since}"
    return None


# ---------------------------------------------------------------- QMP conversations


async def save_conversation(client: Any, fd: int, *, disk_snapshot: str | None, then: str) -> None:
    """Pause the guest, take the disk's internal snapshot `disk_snapshot` (if given), save
    the state to `fd`, then "quit" QEMU or "cont" the guest. A failure resumes the guest
    and removes the disk snapshot made, so the instance runs on unchanged."""
    from qemu.qmp import ExecInterruptedError, ExecuteError

    from ccloudvm.vm import qmp

    await client.execute("stop")
    made = False
    try:
        if disk_snapshot is not None:
            await client.execute(
                "blockdev-snapshot-internal-sync", {"device": "disk", "name": disk_snapshot}
            )
            made = True
        # No bandwidth cap: the file is local, and QEMU's default cap would slow the save.
        await client.execute("migrate-set-parameters", {"max-bandwidth": 2**40})
        client.send_fd_scm(fd)
        await client.execute("getfd", {"fdname": _FD_NAME})
        await client.execute("migrate", {"uri": f"fd:{_FD_NAME}"})
        await qmp.wait_migration(
            client, what="saving the state", timeout=SAVE_TIMEOUT, error=SaveFailed
        )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if made:
                await client.execute(
                    "blockdev-snapshot-delete-internal-sync",
                    {"device": "disk", "name": disk_snapshot},
                )
            await client.execute("cont")
        if isinstance(exc, ExecuteError):
            raise SaveFailed(f"QEMU could not save the state: {exc.error.error.desc}") from exc
        raise
    if then == "quit":
        # The state is saved; QEMU may close the monitor before it answers "quit".
        with contextlib.suppress(ExecInterruptedError):
            await client.execute("quit")
    else:
        # After a migration QEMU has let go of the disk; "cont" takes it back and runs.
        await client.execute("cont")


def save(files: InstanceFiles, out: Path, *, disk_snapshot: str | None, then: str) -> None:
    """Save the running instance's state into the new file `out` (see save_conversation)."""
    from ccloudvm.vm import qmp

    with out.open("wb") as state_file:
        os.fchmod(state_file.fileno(), 0o600)
        fd = state_file.fileno()
        try:
            qmp.converse(
                files.qmp,
                lambda client: save_conversation(
                    client, fd, disk_snapshot=disk_snapshot, then=then
                ),
                SAVE_TIMEOUT,
                what="saving the state",
            )
        except qmp.QMPUnavailable as exc:
            raise SaveFailed(exc.message) from exc


def wait_quit(files: InstanceFiles) -> None:
    """QEMU quits after a save for suspend; make sure it is gone."""
    Machine.of_instance(files).wait(30)


def load(
    state: StateDir, files: InstanceFiles, inst: InstanceState, folder: Path, what: str
) -> None:
    """Start the instance's QEMU from the state saved in folder/STATE and run it. On a
    failure nothing runs and CcloudvmError says why."""
    from ccloudvm.vm import warmboot

    try:
        boot.launch(state, files, inst, restore=warmboot.Snapshot(folder))
    except warmboot.WarmBootFailed as exc:
        boot.force_off(files)
        raise CcloudvmError(f"QEMU could not load {what}: {exc.message}") from exc
    except BaseException:
        boot.force_off(files)
        raise


# ---------------------------------------------------------------- the guest's side


@dataclass(frozen=True)
class GuestMounts:
    """The 9p shares that were mounted in the guest when its state was saved."""

    paths: tuple[str, ...]


def connect(state: StateDir, inst: InstanceState, timeout: float = 60) -> SSHTarget:
    return boot.ssh_target_for(state, inst, deadline=time.monotonic() + timeout)


def unmount_shares(target: SSHTarget, inst: InstanceState) -> GuestMounts:
    """Unmount the instance's 9p shares in the guest (QEMU cannot save a guest that has
    one mounted); on a failure mount again those already unmounted and refuse."""
    done: list[str] = []
    for mount in inst.mount_specs():
        script = 'if mountpoint -q "$1"; then sync; umount "$1" && echo unmounted; fi'
        code, out = target.run_capture(["sh", "-c", script, "sh", mount.guest_path], sudo=True)
        if code != 0:
            remount_shares(target, GuestMounts(tuple(done)))
            raise StateError(
                f"cannot save the running state of {inst.name!r}: the share {mount.guest_path} "
                "is in use in the guest, and QEMU cannot save a guest with a 9p share mounted",
                hint=f"end what uses {mount.guest_path} in the guest (a shell in it, an open "
                f"file) and retry, or stop {inst.name} for a disk-only snapshot",
            )
        if "unmounted" in out:
            done.append(mount.guest_path)
    return GuestMounts(tuple(done))


def remount_shares(target: SSHTarget, mounts: GuestMounts) -> None:
    for path in mounts.paths:
        code, _ = target.run_capture(["mount", path], sudo=True)
        if code != 0:
            ui.warn(f"could not mount the share {path} again in the guest; 'sudo mount {path}'")


def set_clock(target: SSHTarget) -> None:
    """The guest's clock stood still while it was saved: set it to the host's."""
    # The guest's RTC follows the host too, but only to the second; the host's time, taken
    # as the command is sent, is closer.
    code, _ = target.run_capture(["date", "-u", "-s", f"@{time.time():.3f}"], sudo=True)
    if code != 0:
        ui.warn("could not set the guest's clock after the restore")


def after_load(state: StateDir, inst: InstanceState, mounts: GuestMounts) -> None:
    """The guest runs again: set its clock, mount its shares again."""
    with connect(state, inst) as target:
        set_clock(target)
        remount_shares(target, mounts)


def read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(f"{path} is damaged ({exc})") from exc
    if not isinstance(data, dict):
        raise StateError(f"{path} is damaged (not a JSON object)")
    return data


def write_meta(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
