"""Named snapshots of an instance: `snapshot save|restore|list|rm`.

The disk of every snapshot is a qcow2 internal snapshot of the instance's overlay
(disk.qcow2), named "ccloudvm-SNAP": taken in place, no copy, by QMP
`blockdev-snapshot-internal-sync` while the guest is paused, or by `qemu-img snapshot`
when QEMU is not running. A snapshot of a running (or suspended) instance also keeps the
guest's memory and devices, saved by migration to a file (ccloudvm.instance.vmstate) at the same
paused instant, so a restore returns to that running state; one of a stopped instance
is the disk only, and a restore of it leaves the instance stopped.

Layout: <instance>/snapshots/SNAP/ {snapshot.json, state.bin (memory snapshots only)},
made under .making-SNAP and renamed complete; they go with the instance on delete.
Extra --drive disks are not part of a snapshot.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ccloudvm.core import pids as process
from ccloudvm.core import ui
from ccloudvm.core.errors import NotFoundError, StateError, UsageError
from ccloudvm.core.proc import run
from ccloudvm.instance import boot, suspend, vmstate
from ccloudvm.state.instance_state import (
    InstanceFiles,
    InstanceState,
    files_of,
    load_state,
    save_state,
)
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import drivers, qmp

META = "snapshot.json"
PREFIX = "ccloudvm-"  # internal snapshot names: never a bare number, which qemu-img takes as an id
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MEMORY = "memory+disk"
DISK = "disk"


def validate_snapshot_name(snap: str) -> str:
    if not NAME_PATTERN.fullmatch(snap):
        raise UsageError(
            f"invalid snapshot name {snap!r}",
            hint="use 1-63 letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return snap


def default_name(now: float | None = None) -> str:
    return time.strftime("snap-%Y%m%d-%H%M%S", time.localtime(now))


def internal_name(snap: str) -> str:
    return PREFIX + snap


def folder(files: InstanceFiles, snap: str) -> Path:
    return Path(files.snapshots) / snap


def list_snapshots(state: StateDir, name: str) -> list[dict[str, Any]]:
    """The instance's complete snapshots, oldest first."""
    files = files_of(state, name)
    load_state(state, name)
    rows = []
    if files.snapshots.is_dir():
        for entry in files.snapshots.iterdir():
            if entry.name.startswith(".") or not (entry / META).is_file():
                continue
            meta = vmstate.read_meta(entry / META)
            state_file = entry / vmstate.STATE
            rows.append(
                {
                    "name": entry.name,
                    "kind": meta.get("kind", "?"),
                    "created": float(meta.get("created", 0)),
                    "state_mib": round(state_file.stat().st_size / 2**20)
                    if state_file.is_file()
                    else 0,
                    "path": str(entry),
                }
            )
    return sorted(rows, key=lambda r: (r["created"], r["name"]))


def _find(state: StateDir, files: InstanceFiles, name: str, snap: str | None) -> str:
    rows = list_snapshots(state, name)
    if snap is None:
        if not rows:
            raise NotFoundError(
                f"{name!r} has no snapshots",
                hint=f"'ccloudvm snapshot save {name} SNAP' makes one",
            )
        return str(rows[-1]["name"])
    validate_snapshot_name(snap)
    if snap not in {r["name"] for r in rows}:
        names = ", ".join(str(r["name"]) for r in rows)
        raise NotFoundError(
            f"{name!r} has no snapshot {snap!r}",
            hint=f"its snapshots: {names}"
            if names
            else f"it has none; 'ccloudvm snapshot save {name} {snap}' makes one",
        )
    return snap


# ---------------------------------------------------------------- save


def save(state: StateDir, name: str, snap: str | None = None) -> str:
    """Snapshot the instance: memory and disk when it runs (or is suspended), the disk
    when it is stopped. Returns the snapshot's name."""
    snap = validate_snapshot_name(snap) if snap else default_name()
    files = files_of(state, name)
    load_state(state, name)
    with vmstate.locked(files):
        inst = load_state(state, name)
        drivers.require_qemu(inst, "a snapshot")
        if (folder(files, snap) / META).exists():
            raise UsageError(
                f"{name!r} already has a snapshot {snap!r}",
                hint=f"choose another name, or 'ccloudvm snapshot rm {name} {snap}' first",
            )
        files.snapshots.mkdir(mode=0o700, exist_ok=True)
        tmp = files.snapshots / f".making-{snap}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        started = time.monotonic()
        try:
            pid = process.running_pid(files.pidfile, files.dir)
            if pid is not None:
                meta = _save_running(state, files, inst, snap, tmp)
            elif suspend.is_suspended(files):
                meta = _save_suspended(files, snap, tmp)
            else:
                _qemu_img_snapshot("-c", snap, files.disk)
                meta = {"kind": DISK}
            vmstate.write_meta(tmp / META, {**meta, "created": time.time()})
            tmp.rename(folder(files, snap))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    what = "memory and disk" if meta["kind"] == MEMORY else "disk only"
    ui.info(f"snapshot {snap} of {name} saved ({what}, {time.monotonic() - started:.1f} s)")
    return snap


def _save_running(
    state: StateDir, files: InstanceFiles, inst: InstanceState, snap: str, tmp: Path
) -> dict[str, Any]:
    if inst.drives:
        raise UsageError(
            f"cannot snapshot the running state of {inst.name!r}: its extra --drive disks "
            "would not be part of it",
            hint=f"stop {inst.name} for a snapshot of its own disk only",
        )
    fingerprint = vmstate.fingerprint(state, files, inst)
    with (
        ui.spinner(f"Saving snapshot {snap} of {inst.name}") as status,
        vmstate.connect(state, inst) as target,
    ):
        mounts = vmstate.unmount_shares(target, inst)
        try:
            status.update("saving the guest's memory and disk")
            vmstate.save(files, tmp / vmstate.STATE, disk_snapshot=internal_name(snap), then="cont")
            vmstate.set_clock(target)
        finally:
            vmstate.remount_shares(target, mounts)
    return {"kind": MEMORY, "fingerprint": fingerprint, "mounts": list(mounts.paths)}


def _save_suspended(files: InstanceFiles, snap: str, tmp: Path) -> dict[str, Any]:
    """A suspended instance's saved state is the memory part; its disk is as it was."""
    saved = vmstate.read_meta(files.suspended / suspend.META)
    shutil.copyfile(files.suspended / vmstate.STATE, tmp / vmstate.STATE)
    _qemu_img_snapshot("-c", snap, files.disk)
    return {
        "kind": MEMORY,
        "fingerprint": saved.get("fingerprint", {}),
        "mounts": saved.get("mounts", []),
    }


def _qemu_img_snapshot(action: str, snap: str, disk: Path) -> None:
    """qemu-img snapshot -c (create), -a (apply) or -d (delete), with QEMU not running."""
    run(["qemu-img", "snapshot", action, internal_name(snap), disk])


def _keep_disk_size(disk: Path, size_gib: int) -> None:
    """Applying an internal snapshot gives the disk the size it had then: a disk grown
    since (start --disk) gets its size back, so the instance's record stays true."""
    info = json.loads(run(["qemu-img", "info", "--output=json", disk]).stdout)
    if int(info["virtual-size"]) < size_gib * 2**30:
        run(["qemu-img", "resize", "-q", disk, f"{size_gib}G"])


def _disk_snapshots(disk: Path) -> set[str]:
    info = json.loads(run(["qemu-img", "info", "--output=json", "-U", disk]).stdout)
    return {str(s.get("name")) for s in info.get("snapshots", [])}


# ---------------------------------------------------------------- restore


def restore(state: StateDir, name: str, snap: str | None = None) -> str:
    """Return the instance to the snapshot (the newest when none is named): a memory
    snapshot runs again from its instant, a disk one leaves the instance stopped."""
    files = files_of(state, name)
    load_state(state, name)
    with vmstate.locked(files):
        inst = load_state(state, name)
        drivers.require_qemu(inst, "a snapshot")
        snap = _find(state, files, name, snap)
        where = folder(files, snap)
        meta = vmstate.read_meta(where / META)
        if internal_name(snap) not in _disk_snapshots(files.disk):
            raise StateError(
                f"snapshot {snap!r} of {name!r} is damaged: its disk part is missing from {files.disk}",
                hint=f"'ccloudvm snapshot rm {name} {snap}' removes it",
            )
        running = process.running_pid(files.pidfile, files.dir) is not None
        memory = meta.get("kind") == MEMORY
        if memory:
            problem = vmstate.mismatch(
                meta.get("fingerprint", {}),
                vmstate.fingerprint(state, files, inst),
                "the snapshot was taken",
            )
            if problem is not None:
                raise StateError(
                    f"cannot restore snapshot {snap!r} of {name!r}: {problem}",
                    hint="only its disk could be used, which it does not offer alone; "
                    "take a new snapshot",
                )
        elif running:
            raise StateError(
                f"snapshot {snap!r} of {name!r} holds the disk only, and {name} is running",
                hint=f"'ccloudvm stop {name}' first, then restore it",
            )
        started = time.monotonic()
        if running:
            boot.force_off(files)
        if suspend.discard(files):
            ui.info(f"{name} was suspended; that saved state is discarded")
        inst.desired = "stopped"
        save_state(files, inst)
        _qemu_img_snapshot("-a", snap, files.disk)
        _keep_disk_size(files.disk, inst.disk_gib)
        if not memory:
            ui.info(f"{name}'s disk is back to snapshot {snap}; 'ccloudvm start {name}' boots it")
            return snap
        with ui.spinner(f"Restoring {name} to snapshot {snap}") as status:
            vmstate.load(state, files, inst, where, f"snapshot {snap}")
            status.update("setting the guest's clock, mounting its shares")
            vmstate.after_load(state, inst, vmstate.GuestMounts(tuple(meta.get("mounts", []))))
    ui.info(f"{name} restored to snapshot {snap} ({time.monotonic() - started:.1f} s)")
    return snap


# ---------------------------------------------------------------- rm


def remove(state: StateDir, name: str, snap: str) -> None:
    files = files_of(state, name)
    load_state(state, name)
    with vmstate.locked(files):
        snap = _find(state, files, name, validate_snapshot_name(snap))
        if internal_name(snap) in _disk_snapshots(files.disk):
            if process.running_pid(files.pidfile, files.dir) is not None:
                qmp.execute(
                    files.qmp,
                    "blockdev-snapshot-delete-internal-sync",
                    {"device": "disk", "name": internal_name(snap)},
                    timeout=120,
                )
            else:
                _qemu_img_snapshot("-d", snap, files.disk)
        shutil.rmtree(folder(files, snap))
    ui.info(f"snapshot {snap} of {name} removed")
