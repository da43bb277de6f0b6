"""Warm-boot snapshots for instances: made now for a shape (after an image is built or
saved), or later in the background (after a create that booted cold); an instance's disk
overlay on a snapshot or on its image (ccloudvm.vm.warmboot makes and loads them)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ccloudvm.core import ui
from ccloudvm.core.defaults import DEFAULT_DISK_GIB
from ccloudvm.core.hostinfo import host_resources, host_user
from ccloudvm.core.proc import run
from ccloudvm.core.specs import DEFAULT_PORT_ADDRESS
from ccloudvm.images import catalog as images
from ccloudvm.instance import boot
from ccloudvm.state.instance_state import ImageRef, InstanceState, all_states, files_of
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import accel, warmboot


def snapshot_later(state: StateDir, inst: InstanceState) -> None:
    """After a create that booted cold for want of a snapshot of its shape (and after its
    provisioning, so it slows nothing of it): make that snapshot in the background, so the
    next create of this shape starts warm."""
    if inst.warm_snapshot or not inst.mount_slots or not inst.image.warm_boot:
        return
    if not warmboot.background_enabled():
        return
    image = images.find_cached(state, inst.image.disk)
    if image is None:
        return
    files = files_of(state, inst.name)
    acc = accel.detect(mode=inst.accel_mode, run_dir=state.run, probe_kernel=image.kernel)
    machine = boot.machine_config(state, files, inst, acc)
    if warmboot.find_snapshot(state, image, machine) is not None:
        return  # another create of this shape made it meanwhile
    tail = ["--mem", str(inst.mem_mib), "--cpus", str(inst.cpus), "--accel", inst.accel_mode]
    log = warmboot.start_in_background(
        state, image, [*tail, *(["--nested"] if inst.nested else [])]
    )
    ui.info(
        f"making the warm-boot snapshot for {inst.mem_mib} MiB, {inst.cpus} vCPUs in the "
        f"background (log: {log}); the next create of this size starts warm"
    )


def discard_unless_used(state: StateDir, snapshot: warmboot.Snapshot) -> None:
    """Drop a snapshot that failed to load, so the next create makes a new one; one that
    backs an instance's disk stays (the instance needs its disk layer)."""
    if str(snapshot.directory) not in {s.warm_snapshot for s in all_states(state)}:
        shutil.rmtree(snapshot.directory, ignore_errors=True)


def prepare_warm_boot(state: StateDir, inst: InstanceState, image: images.BaseImage) -> None:
    """Make `image`'s snapshot for instances shaped like `inst` now (after `image save` of
    a build), so that the first create from it starts warm too. Failing is not an error."""
    if not (image.warm_boot and inst.mount_slots and warmboot.enabled()):
        return
    _snapshot_like(state, image, inst)


def prepare_default_warm_boot(state: StateDir, image: images.BaseImage) -> None:
    """Make the snapshot a plain `ccloudvm create` (no size flags, no mounts) of `image`
    starts from, right after the image is built, so the very first create is warm."""
    prepare_shape_warm_boot(state, image)


def prepare_shape_warm_boot(
    state: StateDir,
    image: images.BaseImage,
    *,
    mem_mib: int | None = None,
    cpus: int | None = None,
    nested: bool = False,
    accel_mode: str | None = None,
) -> None:
    """Make `image`'s snapshot for instances of this shape (sizes default as create's)."""
    if not (image.warm_boot and warmboot.enabled()):
        return
    mode = accel.requested_mode(accel_mode)
    acc = accel.detect(mode=mode, run_dir=state.run, probe_kernel=image.kernel)
    host = host_resources()
    like = InstanceState(
        name="ccloudvm-shape", workload="", image=image_ref(image),
        mem_mib=mem_mib or host.default_mem_mib(acc.is_kvm),
        cpus=cpus or host.default_cpus(acc.is_kvm), nested=nested,
        disk_gib=DEFAULT_DISK_GIB, host_ip=DEFAULT_PORT_ADDRESS, ssh_port=1,
        guest_user=host_user().guest_name, accel_mode=mode, mount_slots=warmboot.MOUNT_SLOTS,
    )  # fmt: skip
    _snapshot_like(state, image, like)


def image_ref(image: images.BaseImage) -> ImageRef:
    return ImageRef(
        name=image.name, key=image.key, disk=str(image.disk),
        kernel=str(image.kernel) if image.kernel else None,
        initrd=str(image.initrd) if image.initrd else None,
        cmdline=image.cmdline, warm_boot=image.warm_boot,
    )  # fmt: skip


def _snapshot_like(state: StateDir, image: images.BaseImage, inst: InstanceState) -> None:
    like = dataclasses.replace(inst, image=dataclasses.replace(image_ref(image), warm_boot=True))
    acc = accel.detect(mode=inst.accel_mode, run_dir=state.run, probe_kernel=image.kernel)
    try:
        warmboot.ensure_snapshot(
            state, image, boot.machine_config(state, files_of(state, inst.name), like, acc)
        )
    except warmboot.WarmBootFailed as exc:
        ui.warn(f"no warm-boot snapshot of {image.name} ({exc}); its instances will boot cold")


def make_overlay(
    disk: Path, backing: Path, size_gib: int, snapshot: warmboot.Snapshot | None
) -> None:
    # On a snapshot the overlay keeps the size the guest saw; the restore grows it.
    size = [] if snapshot is not None else [f"{size_gib}G"]
    disk.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, disk, *size])
