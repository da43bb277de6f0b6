"""The instance lifecycle: create, start, stop, quit, delete, status.

Each public function takes the instance's lock, so two ccloudvm commands never work on
one instance at once. Create validates everything before it makes anything; if it fails
before QEMU starts, nothing is left behind; if the guest fails to become ready, the
instance stays for inspection (`logs`, `connect`) and `delete` removes it.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccloudvm.core import ui
from ccloudvm.core.defaults import (
    BOOT_TIMEOUT,
    DEFAULT_DISK_GIB,
    MAX_DISK_GIB,
    MIN_MEM_MIB,
    STOP_TIMEOUT,
)
from ccloudvm.core.errors import CcloudvmError, StateError, UsageError
from ccloudvm.core.hostinfo import HostUser, host_resources, host_user
from ccloudvm.core.proc import require_tool, run
from ccloudvm.core.specs import DEFAULT_PORT_ADDRESS, MountSpec, PortSpec
from ccloudvm.guest import keys, seed
from ccloudvm.images import catalog as images
from ccloudvm.instance import boot, warm
from ccloudvm.remote.ssh import known_hosts_line
from ccloudvm.state.instance_state import (
    InstanceFiles,
    InstanceState,
    all_states,
    allocate_host_ip,
    check_port_allowed,
    clear_creating,
    files_of,
    instance_lock,
    instance_names,
    load_state,
    mark_creating,
    pick_ssh_port,
    port_free,
    random_name,
    reserve_host_ip,
    save_state,
    validate_name,
)
from ccloudvm.state.paths import StateDir, refuse_link
from ccloudvm.vm import accel, drivers, warmboot


@dataclass
class CreateRequest:
    workload: str
    image: str
    name: str | None = None
    mem_mib: int | None = None
    cpus: int | None = None
    disk_gib: int | None = None
    ports: list[PortSpec] = field(default_factory=list)
    mounts: list[MountSpec] = field(default_factory=list)
    drives: list[str] = field(default_factory=list)
    accel_mode: str = "auto"
    nested: bool = False
    user_data: dict[str, Any] = field(default_factory=dict)
    timeout: float = BOOT_TIMEOUT
    workload_ref: str = ""
    propagate_proxy: bool = True
    proxy: str = ""  # what proxy propagation wrote into the guest (proxy.describe)
    driver: str = "qemu"
    connect: str = ""  # libvirt URI (drivers.check_choice fills in the default)


# ---------------------------------------------------------------- validation


def _check_sizes(req: CreateRequest, kvm: bool = True) -> tuple[int, int, int]:
    """The sizes asked for, else the defaults for how the VM will run (`kvm` or TCG)."""
    host = host_resources()
    mem = req.mem_mib if req.mem_mib is not None else host.default_mem_mib(kvm)
    cpus = req.cpus if req.cpus is not None else host.default_cpus(kvm)
    disk = req.disk_gib if req.disk_gib is not None else DEFAULT_DISK_GIB
    if not MIN_MEM_MIB <= mem <= host.mem_mib:
        raise UsageError(
            f"--mem {mem} MiB is out of range",
            hint=f"use {MIN_MEM_MIB} to {host.mem_mib} MiB (this host has {host.mem_mib} MiB)",
        )
    if not 1 <= cpus <= host.cpus:
        raise UsageError(
            f"--cpus {cpus} is out of range",
            hint=f"use 1 to {host.cpus} (this host has {host.cpus} CPUs)",
        )
    if not 1 <= disk <= MAX_DISK_GIB:
        raise UsageError(f"--disk {disk} GiB is out of range", hint=f"use 1 to {MAX_DISK_GIB} GiB")
    return mem, cpus, disk


def _check_disk_room(state: StateDir, disk_gib: int) -> None:
    """The overlay grows as the guest writes: refuse a size the host's file system could
    never hold, warn when it is more than is free now."""
    usage = shutil.disk_usage(state.root)
    if disk_gib * 2**30 > usage.total:
        raise UsageError(
            f"--disk {disk_gib} GiB is larger than the file system holding {state.root} "
            f"({usage.total / 2**30:.0f} GiB)",
            hint="choose a smaller --disk, or set CCLOUDVM_HOME to a larger file system",
        )
    if disk_gib * 2**30 > usage.free:
        ui.warn(
            f"--disk {disk_gib} GiB is more than the {usage.free / 2**30:.0f} GiB free on "
            f"{state.root}; the VM stops if the host's disk fills up"
        )


def _check_mounts(mounts: list[MountSpec], user: HostUser) -> list[MountSpec]:
    resolved = []
    seen_tags: set[str] = set()
    seen_paths: set[str] = set()
    for mount in mounts:
        mount.validate()
        if mount.tag in seen_tags or mount.guest_path in seen_paths:
            raise UsageError(
                f"two mounts share the tag {mount.tag!r} or the guest path {mount.guest_path}"
            )
        seen_tags.add(mount.tag)
        seen_paths.add(mount.guest_path)
        # On a root host QEMU runs as root: mapped-xattr keeps the guest user's ownership in
        # xattrs and leaves the host's real owners alone. Otherwise QEMU runs as the user,
        # whose uid the guest user shares, so plain permissions already line up.
        model = mount.security_model or ("mapped-xattr" if user.is_root else "none")
        resolved.append(
            MountSpec(mount.host_path, mount.guest_path, mount.tag, model, mount.readonly)
        )
    return resolved


def drive_path(drive: str) -> str:
    """The file of a QEMU drive string "PATH[,option...]", where a comma inside PATH is
    written ",," (QEMU's escape)."""
    return re.split(r"(?<!,),(?!,)", drive.replace(",,", "\0"), maxsplit=1)[0].replace("\0", ",")


def _check_drives(drives: list[str]) -> None:
    for drive in drives:
        path = Path(drive_path(drive)).expanduser()
        if not path.is_file():
            raise UsageError(
                f"drive {path} does not exist",
                hint="give an existing disk image: --drive PATH,format=qcow2",
            )


def _check_ports(ports: list[PortSpec], host_ip: str) -> None:
    """Every forward can be bound: on 127.0.0.1 unless the port names its address. The SSH
    forward is on the instance's own address (`host_ip`), so it never clashes with these."""
    seen: set[tuple[str, int]] = set()
    for port in ports:
        where = (port.bind_address, port.host)
        if where in seen:
            raise UsageError(f"host port {port.bind_address}:{port.host} is forwarded twice")
        seen.add(where)
        check_port_allowed(port.bind_address, port.host)  # "needs root" is not "in use"
        if not port_free(port.bind_address, port.host):
            raise UsageError(
                f"port {port.host} on {port.bind_address} is already in use",
                hint=f"pick another host port (--port {_spare_port(port.host)}:{port.guest}) "
                f"or another loopback address (--port 127.0.0.2:{port.host}:{port.guest})",
            )


def _spare_port(taken: int) -> int:
    for candidate in range(taken + 10000 if taken < 50000 else 20000, 65536):
        if port_free(DEFAULT_PORT_ADDRESS, candidate):
            return candidate
    return 18080


def _disk_virtual_size_gib(disk: Path) -> float:
    info = json.loads(run(["qemu-img", "info", "--output=json", "-U", disk]).stdout)
    return int(info["virtual-size"]) / 2**30


# ---------------------------------------------------------------- launching


# ---------------------------------------------------------------- commands


def create(state: StateDir, req: CreateRequest) -> InstanceState:
    """Make a new instance and boot it until it is ready; return its record."""
    state.ensure()
    user = host_user()
    taken = set(instance_names(state))
    name = validate_name(req.name) if req.name else random_name(taken)
    refuse_link(state.instance_dir(name))
    if name in taken or state.instance_dir(name).exists():
        raise UsageError(
            f"an instance named {name!r} already exists",
            hint="choose another --name or delete it first",
        )
    mem, cpus, disk = _check_sizes(req)
    _check_disk_room(state, disk)
    mounts = _check_mounts(req.mounts, user)
    _check_drives(req.drives)
    host_ip = allocate_host_ip({s.host_ip for s in all_states(state)})
    _check_ports(req.ports, host_ip)
    if req.driver == "libvirt":  # the URI answers; no domain of that name is someone else's
        from ccloudvm.vm import libvirt_driver

        libvirt_driver.check_create(req.connect, name, state.instance_dir(name))
    require_tool("qemu-system-x86_64")
    require_tool("qemu-img")
    files = files_of(state, name)
    made_dir = False
    launched = False
    try:
        files.dir.mkdir(parents=True)
        made_dir = True
        files.dir.chmod(0o700)
        # Listed as "creating" from now on, the image download included (issue 10).
        mark_creating(files)
        base = images.ensure_image(state, req.image)
        if req.mem_mib is None or req.cpus is None:
            # Default sizes depend on the accelerator (cached per host boot; no extra probe).
            acc = accel.detect(mode=req.accel_mode, run_dir=state.run, probe_kernel=base.kernel)
            mem, cpus, disk = _check_sizes(req, kvm=acc.is_kvm)
        if disk < _disk_virtual_size_gib(base.disk):
            raise UsageError(
                f"--disk {disk} GiB is smaller than the image {req.image} ({_disk_virtual_size_gib(base.disk):.1f} GiB)"
            )

        # Images whose guest can wait for its seed start from a snapshot (ccloudvm.vm.warmboot);
        # their instances get the fixed mount slots such a snapshot's guest already knows.
        # (Not under libvirt: a snapshot is loaded over QMP, which libvirt keeps to itself.)
        slots = warmboot.MOUNT_SLOTS if warmboot.fits(base, mounts, req.drives) else 0
        slots = slots if req.driver == "qemu" else 0
        if slots:
            mounts = warmboot.slot_mounts(mounts)
        host_ip = reserve_host_ip(state, files)
        with instance_lock(files):
            user_key = keys.ensure_user_key(state)
            host_key = keys.generate_ed25519(f"ccloudvm-{name}")
            keys.write_keypair(host_key, files.host_key)
            inst = InstanceState(
                name=name,
                workload=req.workload,
                image=warm.image_ref(base),
                mem_mib=mem,
                cpus=cpus,
                disk_gib=disk,
                host_ip=host_ip,
                ssh_port=pick_ssh_port(host_ip),
                guest_user=user.guest_name,
                accel_mode=req.accel_mode,
                nested=req.nested,
                ports=[str(p) for p in req.ports],
                mounts=[InstanceState.mount_record(m) for m in mounts],
                drives=list(req.drives),
                workload_ref=req.workload_ref or req.workload,
                propagate_proxy=req.propagate_proxy,
                proxy=req.proxy,
                mount_slots=slots,
                driver=req.driver,
                connect=req.connect,
            )
            files.known_hosts.write_text(
                known_hosts_line(inst.host_ip, inst.ssh_port, host_key.public_openssh) + "\n"
            )
            instance_id = f"{name}-{uuid.uuid4().hex[:12]}"
            files.instance_id.write_text(instance_id + "\n")
            seed.write_seed_iso(
                files.seed,
                seed.SeedConfig(
                    hostname=name,
                    user_name=user.guest_name,
                    uid=user.guest_uid,
                    gid=user.guest_gid,
                    home=user.guest_home,
                    authorized_keys=[user_key.public_openssh],
                    host_key=host_key,
                    mounts=mounts,
                    chown_mounts=user.is_root,
                    extra_user_data=req.user_data,
                ),
                instance_id,
            )
            # A QEMU that refuses to start leaves nothing worth keeping; a guest that
            # started but is not ready stays for `logs` and `connect`.
            _first_boot(state, files, inst, base)
            launched = True
            boot.wait_ready(state, files, inst, req.timeout).close()
            clear_creating(files)
            if req.proxy:
                ui.info(f"proxy: {req.proxy}")
            return inst
    except BaseException as exc:
        # An interruption (^C, SIGTERM, SIGHUP: not an Exception) removes even a guest
        # that started; a guest that started but failed otherwise stays for inspection.
        if made_dir and (not launched or not isinstance(exc, Exception)):
            _discard_machine(state, files)
            shutil.rmtree(files.dir, ignore_errors=True)
        raise


def _first_boot(
    state: StateDir, files: InstanceFiles, inst: InstanceState, base: images.BaseImage
) -> None:
    """Make the disk overlay and start QEMU: from the image's warm-boot snapshot when it
    has one (made now if needed), else, or if loading it fails, by booting cold."""
    acc = boot.acceleration(state, inst)
    snapshot = _warm_snapshot(state, files, inst, base, acc)
    warm.make_overlay(files.disk, snapshot.disk if snapshot else base.disk, inst.disk_gib, snapshot)
    inst.warm_snapshot = str(snapshot.directory) if snapshot else None
    save_state(files, inst)
    if snapshot is None:
        boot.launch(state, files, inst, acc)
        return
    try:
        boot.launch(state, files, inst, acc, restore=snapshot)
    except warmboot.WarmBootFailed as exc:
        ui.warn(f"{inst.name} could not start from the warm-boot snapshot ({exc}); booting cold")
        boot.force_off(files)
        warm.make_overlay(files.disk, base.disk, inst.disk_gib, None)
        inst.warm_snapshot = None
        save_state(files, inst)
        warm.discard_unless_used(state, snapshot)
        boot.launch(state, files, inst, acc)


def _warm_snapshot(
    state: StateDir,
    files: InstanceFiles,
    inst: InstanceState,
    base: images.BaseImage,
    acc: accel.Acceleration,
) -> warmboot.Snapshot | None:
    """The snapshot to start this new instance from; None: boot cold. A shape without one
    boots cold (faster than making it first); snapshot_later makes it afterwards."""
    if not inst.mount_slots or not warmboot.enabled():
        return None
    if not warmboot.pad_seed(files.seed):
        ui.info(f"{inst.name}'s cloud-init seed is too big for a warm boot; booting cold")
        return None
    found = warmboot.find_snapshot(state, base, boot.machine_config(state, files, inst, acc))
    if found is None:
        ui.info(
            f"no warm-boot snapshot of {base.name} for {inst.mem_mib} MiB, {inst.cpus} vCPUs yet; booting cold"
        )
    return found


@dataclass(frozen=True)
class Resize:
    """New sizes for a stopped instance (None: keep)."""

    mem_mib: int | None = None
    cpus: int | None = None
    disk_gib: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.mem_mib, self.cpus, self.disk_gib))


def start(
    state: StateDir,
    name: str,
    timeout: float = BOOT_TIMEOUT,
    accel_mode: str | None = None,
    resize: Resize = Resize(),  # noqa: B008 - immutable
) -> InstanceState:
    """Boot a stopped instance; `accel_mode` (auto, kvm, tcg) replaces the saved choice,
    `resize` its sizes (kept for later boots; a disk only grows)."""
    files = files_of(state, name)
    load_state(state, name)  # a missing instance fails here, before a lock file is made
    with instance_lock(files):
        inst = load_state(state, name)  # as it is now, not before the lock
        if drivers.for_instance(files, inst).is_running():
            if resize:
                raise StateError(
                    f"{name} is running; its sizes change only while it is stopped",
                    hint=f"'ccloudvm restart {name}' with the same options stops and starts it",
                )
            ui.info(f"{name} is already running")
            return inst
        from ccloudvm.instance import suspend

        if suspend.is_suspended(files):
            if resize:
                raise StateError(
                    f"{name!r} is suspended; its sizes change only while it is stopped",
                    hint=f"'ccloudvm resume {name}' continues it as it is; 'ccloudvm stop "
                    f"{name}' discards its saved state, then start resizes it",
                )
            ui.info(f"{name} is suspended; resuming it")
            return suspend.resume_locked(state, files, inst)
        if resize:
            _resize(files, inst, resize)
        if accel_mode is not None:
            inst.accel_mode = accel_mode
        boot.launch(state, files, inst)
        boot.wait_ready(state, files, inst, timeout).close()
        clear_creating(files)  # a create that failed is fixed by a start that gets ready
        return inst


def _resize(files: InstanceFiles, inst: InstanceState, resize: Resize) -> None:
    """Apply new sizes to a stopped instance: checked first, then the disk grown, then
    the record saved (cloud-init grows the file system at the next boot)."""
    request = CreateRequest(
        workload=inst.workload, image=inst.image.name,
        mem_mib=resize.mem_mib or inst.mem_mib, cpus=resize.cpus or inst.cpus,
        disk_gib=resize.disk_gib or inst.disk_gib,
    )  # fmt: skip
    mem, cpus, disk = _check_sizes(request)
    current = _disk_virtual_size_gib(files.disk)
    if resize.disk_gib is not None and disk < current:
        raise UsageError(
            f"--disk {disk} GiB is smaller than {inst.name}'s disk ({current:.0f} GiB)",
            hint="a disk only grows: give a size of at least the current one",
        )
    if resize.disk_gib is not None and disk > current:
        run(["qemu-img", "resize", "-q", files.disk, f"{disk}G"])
    inst.mem_mib, inst.cpus, inst.disk_gib = mem, cpus, disk
    save_state(files, inst)
    ui.info(f"{inst.name}: {mem} MiB, {cpus} vCPUs, {disk} GiB disk")


def restart(
    state: StateDir,
    name: str,
    timeout: float = BOOT_TIMEOUT,
    resize: Resize = Resize(),  # noqa: B008 - immutable
) -> InstanceState:
    """Stop the instance politely (if it runs) and start it again, resized if asked."""
    stop(state, name)
    return start(state, name, timeout, resize=resize)


def stop(state: StateDir, name: str, timeout: float = STOP_TIMEOUT) -> None:
    """Shut the guest down politely; quit QEMU, then kill it, if the guest does not."""
    files = files_of(state, name)
    load_state(state, name)  # a missing instance fails here, before a lock file is made
    with instance_lock(files):
        inst = load_state(state, name)  # as it is now, not before the lock
        driver = drivers.for_instance(files, inst)
        running = driver.is_running()
        inst.desired = "stopped"
        save_state(files, inst)
        if not running:
            from ccloudvm.instance import suspend

            if suspend.discard(files):
                ui.info(f"{name} was suspended; its saved state is discarded, it is stopped")
                return
            ui.info(f"{name} is already stopped")
            return
        with ui.spinner(f"Stopping {name}"):
            driver.stop(timeout)
        ui.info(f"{name} stopped")


def quit_instance(state: StateDir, name: str) -> None:
    """Stop QEMU at once, as pulling the plug would."""
    files = files_of(state, name)
    load_state(state, name)  # a missing instance fails here, before a lock file is made
    with instance_lock(files):
        inst = load_state(state, name)  # as it is now, not before the lock
        inst.desired = "stopped"
        save_state(files, inst)
        drivers.for_instance(files, inst).quit()
        ui.info(f"{name} quit")


def _discard_machine(state: StateDir, files: InstanceFiles) -> None:
    """Stop the instance's machine at once and make its driver forget it (libvirt's
    domain), before its folder goes. A damaged or missing state: the QEMU we started."""
    try:
        inst = load_state(state, files.dir.name)
    except CcloudvmError:
        boot.force_off(files)
        return
    drivers.for_instance(files, inst).delete()


def delete(state: StateDir, name: str) -> None:
    validate_name(name)
    files = files_of(state, name)
    refuse_link(files.dir)
    if not files.dir.exists():
        raise UsageError(f"no instance named {name!r}", hint="'ccloudvm instances' lists them")
    with instance_lock(files):
        _discard_machine(state, files)
        shutil.rmtree(files.dir)
    ui.info(f"{name} deleted")
