"""Warm boot: start a new instance from a snapshot of its image, booted once, instead of
booting it.

Under emulation the kernel, systemd and cloud-init's Python start-up cost most of a
boot, and they are the same for every instance of an image. An image whose definition
says `boot: {warm: true}` carries a cloud-init unit that, finding the seed disk blank,
imports what cloud-init's stages need, prints WAITING_MARKER and waits for a seed. The
first create of a machine shape (image, memory, CPUs, acceleration) boots the image so
once, with a blank seed, and saves QEMU's state (memory and devices) and the disk at that
point. Later creates start QEMU with `-incoming defer`, load that state and give the
guest its own seed: cloud-init then runs for the new instance exactly as in a cold boot,
without the boot before it.

What the guest saw must be the same on both sides: machine, CPU, memory, CPU count, the
device list and order, the kernel. So instances of such images always have MOUNT_SLOTS
9p devices with fixed tags (the spare ones share an empty read-only folder) and a seed
padded to SEED_SIZE. What may differ is what only the host sees: the disk overlay, the
seed file, the shared folders, forwarded ports, sockets, the instance name.

Layout: <state>/cache/warm/<image directory name>/<shape key>/ {disk.qcow2, state.bin,
snapshot.json}, made in a temporary directory and renamed into place complete. disk.qcow2
is an overlay on the image's disk; instance overlays are backed by it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import ExecInterruptedError, QMPClient

from ccloudvm.core import diskspace, ui
from ccloudvm.core import pids as process
from ccloudvm.core.errors import CcloudvmError
from ccloudvm.core.proc import require_tool, run
from ccloudvm.core.specs import DriveSpec, MountSpec
from ccloudvm.images.catalog import BaseImage
from ccloudvm.state import paths
from ccloudvm.state.instance_state import pick_ssh_port
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import qemu, qmp, ready
from ccloudvm.vm.machine import LaunchFailed, Machine

# Printed by the image's cloud-init unit (images/debian-12.yaml) when it waits for a seed.
WAITING_MARKER = "CCLOUDVM-WARM-WAITING"
SEED_SIZE = 8 * 2**20  # every seed of a warm-capable instance is padded to this size
MOUNT_SLOTS = 4
FORMAT = 1  # bump when what a snapshot holds changes
DISK = "disk.qcow2"
STATE = "state.bin"
META = "snapshot.json"
ENV_SWITCH = "CCLOUDVM_WARM_BOOT"  # "0" turns warm boot off (cold boots only)
# "0": a create of a shape without a snapshot boots cold and makes none afterwards.
ENV_BACKGROUND = "CCLOUDVM_BACKGROUND_SNAPSHOTS"
SNAPSHOT_TIMEOUT = 600.0
RESTORE_TIMEOUT = 120.0
# A booted guest's memory as saved (zero pages skipped) is rarely less than this.
SNAPSHOT_MIN_BYTES = 256 << 20


class WarmBootFailed(CcloudvmError):
    """A snapshot could not be made or loaded; the caller boots cold instead."""


@dataclass(frozen=True)
class Snapshot:
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / DISK

    @property
    def state_file(self) -> Path:
        return self.directory / STATE


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "no", "off", "false")


def snapshots_dir(state: StateDir) -> Path:
    return state.cache / "warm"


def snapshots_of(state: StateDir, image: BaseImage) -> list[Snapshot]:
    """The complete snapshots of `image`, one per machine size it was created with."""
    folder = snapshots_dir(state) / image.directory.name
    if not folder.is_dir():
        return []
    return [Snapshot(d) for d in sorted(folder.iterdir()) if d.is_dir() and (d / META).is_file()]


def slot_tag(index: int) -> str:
    return f"ccvm{index}"


def fits(image: BaseImage, mounts: Sequence[MountSpec], drives: Sequence[DriveSpec]) -> bool:
    """Whether instances with these mounts and drives can share the image's snapshots."""
    return image.warm_boot and len(mounts) <= MOUNT_SLOTS and not drives


def slot_mounts(mounts: Sequence[MountSpec]) -> list[MountSpec]:
    """The mounts with the fixed slot tags a snapshot's guest already knows."""
    return [dataclasses.replace(m, tag=slot_tag(i)) for i, m in enumerate(mounts)]


def spare_folder(state: StateDir) -> Path:
    """The empty, read-only folder behind unused mount slots."""
    folder = snapshots_dir(state) / "empty"
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


def pad_mounts(state: StateDir, mounts: Sequence[MountSpec], slots: int) -> list[MountSpec]:
    spare = spare_folder(state)
    padded = list(mounts)
    for index in range(len(padded), slots):
        padded.append(MountSpec(spare, f"/nonexistent/{index}", slot_tag(index), "none", True))
    return padded


def pad_seed(seed: Path) -> bool:
    """Pad a seed ISO to SEED_SIZE; False when it is too big for a snapshot's seed disk."""
    size = seed.stat().st_size
    if size > SEED_SIZE:
        return False
    os.truncate(seed, SEED_SIZE)
    return True


# ---------------------------------------------------------------- finding or making one


def shape_key(template: qemu.MachineConfig, qemu_version: str) -> str:
    """A hash of what the guest sees: the command line with every host-only value made
    neutral, and the QEMU that runs it (a snapshot loads only into the same QEMU)."""
    neutral = dataclasses.replace(
        template,
        name="warm",
        disk=Path("/disk"),
        seed=Path("/seed"),
        host_ip="127.0.0.1",
        ssh_port=1,
        qmp_socket=Path("/qmp"),
        serial_log=Path("/serial"),
        pidfile=Path("/pid"),
        ports=(),
        mounts=tuple(
            dataclasses.replace(m, host_path=Path("/share"), security_model="none", readonly=True)
            for m in template.mounts
        ),
    )
    content = {"argv": qemu.command_line("qemu", neutral), "qemu": qemu_version, "format": FORMAT}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _shape(
    state: StateDir, image: BaseImage, machine: qemu.MachineConfig
) -> tuple[qemu.MachineConfig, str, Path]:
    """The machine as the snapshot runs it, the QEMU binary, and the snapshot's folder."""
    qemu_bin = require_tool("qemu-system-x86_64")
    template = dataclasses.replace(
        machine, mounts=tuple(pad_mounts(state, [], len(machine.mounts))), ports=()
    )
    version = run([qemu_bin, "--version"]).stdout.splitlines()[0]
    folder = snapshots_dir(state) / image.directory.name / shape_key(template, version)
    return template, qemu_bin, folder


def find_snapshot(
    state: StateDir, image: BaseImage, machine: qemu.MachineConfig
) -> Snapshot | None:
    """The finished snapshot for `machine`'s shape of `image`, if there is one."""
    _, _, folder = _shape(state, image, machine)
    return Snapshot(folder) if (folder / META).is_file() else None


def background_enabled() -> bool:
    value = os.environ.get(ENV_BACKGROUND, "1").strip().lower()
    return enabled() and value not in ("0", "no", "off", "false")


def start_in_background(state: StateDir, image: BaseImage, argv_tail: Sequence[str]) -> Path:
    """Make a snapshot in a detached `ccloudvm image snapshot IMAGE ARGV_TAIL` (which takes
    the image's snapshot lock, so two never make the same one); return its log file."""
    folder = snapshots_dir(state) / image.directory.name
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "background.log"
    with log.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv_tail)}\n".encode())
        out.flush()
        subprocess.Popen(  # noqa: S603 - our own CLI, argv of validated values
            [sys.executable, "-m", "ccloudvm", "image", "snapshot", image.name, *argv_tail],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,  # survives the create's terminal and Ctrl-C
            env={**os.environ, "CCLOUDVM_HOME": str(state.root)},
        )  # fmt: skip
    return log


def ensure_snapshot(state: StateDir, image: BaseImage, machine: qemu.MachineConfig) -> Snapshot:
    """The snapshot for `machine`'s shape of `image`, made first if there is none yet.

    `machine` is the instance's own configuration; only what the guest sees is used.
    """
    template, qemu_bin, folder = _shape(state, image, machine)
    if (folder / META).is_file():
        return Snapshot(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with paths.file_lock(folder.parent / ".lock"):
        if not (folder / META).is_file():  # another create may have made it meanwhile
            remove_unfinished(folder.parent)
            _make(state, image, template, qemu_bin, folder)
    return Snapshot(folder)


def remove_unfinished(image_folder: Path) -> list[Path]:
    """Remove what a snapshot boot killed half-way left (its folder, its QEMU). Call it
    holding the image's lock, so nothing found here is still being made."""
    removed = []
    for leftover in image_folder.glob(".making-*"):
        pid = process.running_pid(leftover / "qemu.pid", leftover)
        if pid is not None:
            process.kill(pid, leftover)
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def _make(
    state: StateDir,
    image: BaseImage,
    template: qemu.MachineConfig,
    qemu_bin: str,
    folder: Path,
) -> None:
    started = time.monotonic()
    try:
        diskspace.check_free_space(folder.parent, SNAPSHOT_MIN_BYTES)
    except diskspace.NoSpaceError as exc:
        raise WarmBootFailed(exc.message) from exc
    tmp = Path(tempfile.mkdtemp(prefix=".making-", dir=folder.parent))
    try:
        state.run.mkdir(parents=True, exist_ok=True)
        # The monitor socket lives in a short path: unix sockets allow 107 bytes.
        with tempfile.TemporaryDirectory(prefix="warm-", dir=state.run) as sockets:
            cfg = _boot_and_save(image, template, qemu_bin, tmp, Path(sockets) / "qmp")
        (tmp / META).write_text(
            json.dumps(
                {
                    "image": image.name,
                    "image_key": image.key,
                    "mem_mib": cfg.mem_mib,
                    "cpus": cfg.cpus,
                    "accel": cfg.accel.accel,
                    "created": time.time(),
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
        )
        os.rename(tmp, folder)  # complete, or not there at all
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and _filled_disk(exc, folder.parent):
            raise WarmBootFailed(diskspace.no_space_error(folder.parent).message) from exc
        raise
    ui.info(
        f"warm-boot snapshot of {image.name} made in {time.monotonic() - started:.1f} s "
        f"({(folder / STATE).stat().st_size / 2**20:.0f} MiB)"
    )


def _filled_disk(exc: Exception, folder: Path) -> bool:
    # QEMU reports a full disk during migration only as a failed migration: ask the disk.
    free = diskspace.free_bytes(folder)
    return diskspace.is_disk_full(exc) or (free is not None and free < SNAPSHOT_MIN_BYTES // 4)


def _boot_and_save(
    image: BaseImage, template: qemu.MachineConfig, qemu_bin: str, tmp: Path, qmp_socket: Path
) -> qemu.MachineConfig:
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.disk, tmp / DISK])
    blank_seed = tmp / "blank-seed"
    with blank_seed.open("wb") as seed_file:
        seed_file.truncate(SEED_SIZE)
    cfg = dataclasses.replace(
        template,
        name=f"ccloudvm-warm-{image.name}",
        disk=tmp / DISK,
        seed=blank_seed,
        host_ip="127.0.0.1",
        ssh_port=pick_ssh_port("127.0.0.1", 20022),
        qmp_socket=qmp_socket,
        serial_log=tmp / "serial.log",
        pidfile=tmp / "qemu.pid",
    )
    with (
        Machine.configure(cfg, qemu_bin=qemu_bin) as machine,
        ui.spinner(
            f"Booting {image.name} once for a warm-boot snapshot ({cfg.mem_mib} MiB, {cfg.cpus} "
            "CPUs; later creates of this size start from it)"
        ) as status,
    ):
        try:
            machine.launch()
        except LaunchFailed as exc:
            raise WarmBootFailed(f"QEMU refused the snapshot boot: {exc.reason}") from exc
        ready.wait_for_marker(
            cfg.serial_log, marker=WAITING_MARKER,
            deadline=time.monotonic() + SNAPSHOT_TIMEOUT, is_alive=machine.is_running,
            on_stage=ready.report_stage(status), name=f"the {image.name} snapshot boot",
        )  # fmt: skip
        status.update("saving the snapshot")
        with (tmp / STATE).open("wb") as out:
            os.fchmod(out.fileno(), 0o600)
            _qmp(cfg.qmp_socket, _save_commands(out.fileno()))
    blank_seed.unlink()
    return cfg


# ---------------------------------------------------------------- QMP conversations


def _save_commands(fd: int) -> Any:
    return lambda client: _save(client, fd)


async def _save(client: QMPClient, fd: int) -> None:
    await client.execute("stop")
    # No bandwidth cap: the file is local, and QEMU's default cap would slow the save.
    await client.execute("migrate-set-parameters", {"max-bandwidth": 2**40})
    client.send_fd_scm(fd)
    await client.execute("getfd", {"fdname": "snapshot"})
    await client.execute("migrate", {"uri": "fd:snapshot"})
    await qmp.wait_migration(
        client, what="saving the snapshot", timeout=RESTORE_TIMEOUT, error=WarmBootFailed
    )
    # The state is saved; QEMU may close the monitor before it answers "quit".
    with contextlib.suppress(ExecInterruptedError):
        await client.execute("quit")


def _qmp(socket: Path, conversation: Any, timeout: float = 180) -> None:
    try:
        qmp.converse(socket, conversation, timeout, what="warm boot")
    except qmp.QMPUnavailable as exc:
        raise WarmBootFailed(exc.message) from exc


# ---------------------------------------------------------------- restoring


def restore(qmp_socket: Path, snapshot: Snapshot, disk_bytes: int) -> None:
    """Load `snapshot` into a QEMU started with `-incoming defer`, grow its disk, run it."""

    async def conversation(client: QMPClient, fd: int) -> None:
        client.send_fd_scm(fd)
        await client.execute("getfd", {"fdname": "snapshot"})
        await client.execute("migrate-incoming", {"uri": "fd:snapshot"})
        await qmp.wait_migration(
            client, what="loading the snapshot", timeout=RESTORE_TIMEOUT, error=WarmBootFailed
        )
        # The guest saw the image's disk size when the snapshot was taken; resizing now
        # tells it the instance's size, in time for cloud-init's resize_rootfs.
        await client.execute("block_resize", {"device": "disk", "size": disk_bytes})
        # The snapshot was taken paused, so QEMU stays paused after loading it.
        await client.execute("cont")

    with snapshot.state_file.open("rb") as state_file:
        fd = state_file.fileno()
        _qmp(qmp_socket, lambda client: conversation(client, fd), timeout=RESTORE_TIMEOUT)
