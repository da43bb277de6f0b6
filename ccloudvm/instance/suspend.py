"""suspend and resume: a running instance's state saved to its folder and QEMU stopped, so
it uses no CPU or memory; resume loads the state and the guest continues where it was.

Layout: <instance>/suspended/ {state.bin, suspend.json}; the folder exists, complete,
exactly while the instance is suspended (it is made under another name and renamed).
suspend.json records what the state needs to load (ccloudvm.instance.vmstate.fingerprint) and
which 9p shares to mount again. The disk is left as it is: nothing writes to it while
the instance is suspended. `stop` of a suspended instance discards the saved state (as
a power-off would), `start` resumes it, `delete` removes it with the rest.
"""

from __future__ import annotations

import shutil
import time

from ccloudvm.core import pids as process
from ccloudvm.core import ui
from ccloudvm.core.errors import StateError
from ccloudvm.instance import vmstate
from ccloudvm.state.instance_state import (
    InstanceFiles,
    InstanceState,
    files_of,
    load_state,
    save_state,
)
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import drivers

META = "suspend.json"
FORMAT = 1


def is_suspended(files: InstanceFiles) -> bool:
    return bool((files.suspended / META).is_file())


def suspend(state: StateDir, name: str) -> None:
    files = files_of(state, name)
    load_state(state, name)  # a missing instance fails here, before a lock file is made
    with vmstate.locked(files):
        inst = load_state(state, name)
        drivers.require_qemu(inst, "suspend")
        pid = process.running_pid(files.pidfile, files.dir)
        if pid is None:
            if is_suspended(files):
                ui.info(f"{name} is already suspended")
                return
            raise StateError(
                f"{name!r} is not running, so there is nothing to suspend",
                hint=f"start it with 'ccloudvm start {name}'",
            )
        started = time.monotonic()
        fingerprint = vmstate.fingerprint(state, files, inst)
        tmp = files.dir / ".suspending"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        try:
            with ui.spinner(f"Suspending {name}") as status:
                with vmstate.connect(state, inst) as target:
                    mounts = vmstate.unmount_shares(target, inst)
                    status.update("saving the guest's memory")
                    try:
                        vmstate.save(files, tmp / vmstate.STATE, disk_snapshot=None, then="quit")
                    except BaseException:
                        vmstate.remount_shares(target, mounts)
                        raise
                vmstate.wait_quit(files)
            vmstate.write_meta(
                tmp / META,
                {
                    "format": FORMAT,
                    "fingerprint": fingerprint,
                    "mounts": list(mounts.paths),
                    "suspended": time.time(),
                },
            )
            tmp.rename(files.suspended)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        inst.desired = "suspended"
        save_state(files, inst)
        size = (files.suspended / vmstate.STATE).stat().st_size / 2**20
        ui.info(
            f"{name} suspended ({time.monotonic() - started:.1f} s, {size:.0f} MiB saved); "
            f"'ccloudvm resume {name}' continues it"
        )


def resume(state: StateDir, name: str) -> InstanceState:
    files = files_of(state, name)
    load_state(state, name)
    with vmstate.locked(files):
        inst = load_state(state, name)
        if process.running_pid(files.pidfile, files.dir) is not None:
            ui.info(f"{name} is already running")
            return inst
        if not is_suspended(files):
            raise StateError(
                f"{name!r} is not suspended", hint=f"boot it with 'ccloudvm start {name}'"
            )
        return resume_locked(state, files, inst)


def resume_locked(state: StateDir, files: InstanceFiles, inst: InstanceState) -> InstanceState:
    """Resume the suspended instance; the caller holds its lock. A refusal or a failure
    leaves it suspended as it was."""
    name = inst.name
    meta = vmstate.read_meta(files.suspended / META)
    problem = vmstate.mismatch(
        meta.get("fingerprint", {}), vmstate.fingerprint(state, files, inst), "it was suspended"
    )
    if problem is None and meta.get("format") != FORMAT:
        problem = "it was suspended by another version of ccloudvm"
    if problem is not None:
        raise StateError(
            f"cannot resume {name!r}: {problem}",
            hint=f"'ccloudvm stop {name}' discards the saved state (like a power-off), then "
            f"'ccloudvm start {name}' boots it",
        )
    started = time.monotonic()
    with ui.spinner(f"Resuming {name}") as status:
        try:
            vmstate.load(state, files, inst, files.suspended, "the suspended state")
        except BaseException:
            inst.desired = "suspended"  # the saved state is still there for another try
            save_state(files, inst)
            raise
        shutil.rmtree(files.suspended)  # the guest runs on from it: it is spent
        status.update("setting the guest's clock, mounting its shares")
        vmstate.after_load(state, inst, vmstate.GuestMounts(tuple(meta.get("mounts", []))))
    ui.info(f"{name} resumed ({time.monotonic() - started:.1f} s)")
    return inst


def discard(files: InstanceFiles) -> bool:
    """Drop a suspended instance's saved state (stop of a suspended instance); whether
    there was one."""
    if not files.suspended.exists():
        return False
    shutil.rmtree(files.suspended)
    return True
