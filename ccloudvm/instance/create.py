"""Create: make a new instance and boot it until it is ready.

One ordered list of steps, each with its undo on a contextlib.ExitStack: everything is
checked before anything is made; then the instance folder (with the address reserved in
it, its keys, seed and disk overlay), then the machine started. A failure before the
machine starts unwinds all of it in reverse. Once it started, a guest that fails to
become ready stays for inspection (`logs`, `connect`; `delete` removes it), and only an
interruption (^C, SIGTERM, SIGHUP: not an Exception) unwinds the rest. The SSH
connection on which readiness was seen is handed on, for provisioning to reuse.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, replace

from ccloudvm.core import ui
from ccloudvm.core.errors import UsageError
from ccloudvm.core.hostinfo import HostUser, host_user
from ccloudvm.core.proc import require_tool
from ccloudvm.core.specs import MountSpec
from ccloudvm.guest import keys, seed
from ccloudvm.images import catalog as images
from ccloudvm.instance import boot, warm
from ccloudvm.instance.checks import (
    CreateRequest,
    _check_disk_room,
    _check_drives,
    _check_mounts,
    _check_ports,
    _check_sizes,
)
from ccloudvm.instance.lifecycle import _discard_machine, _disk_virtual_size_gib
from ccloudvm.remote.ssh import SSHTarget, known_hosts_line
from ccloudvm.state.instance_state import (
    InstanceFiles,
    InstanceState,
    all_states,
    allocate_host_ip,
    clear_creating,
    files_of,
    instance_lock,
    instance_names,
    mark_creating,
    pick_ssh_port,
    random_name,
    reserve_host_ip,
    save_state,
    validate_name,
)
from ccloudvm.state.paths import StateDir, refuse_link
from ccloudvm.vm import accel, libvirt_driver, warmboot


def _taken(name: str) -> UsageError:
    return UsageError(
        f"an instance named {name!r} already exists",
        hint="choose another --name or delete it first",
    )


def claim_name(state: StateDir, name: str | None) -> str:
    """The one check of a new instance's name: a valid one that no instance has (and no
    symbolic link stands for), or a random free one when none is given."""
    state.ensure()
    taken = set(instance_names(state))
    name = validate_name(name) if name else random_name(taken)
    refuse_link(state.instance_dir(name))
    if name in taken or state.instance_dir(name).exists():
        raise _taken(name)
    return name


@dataclass(frozen=True)
class _Checked:
    """What the checks found, before anything is made."""

    name: str
    user: HostUser
    mem: int
    cpus: int
    disk: int
    mounts: list[MountSpec]
    slots: int = 0  # warm-boot mount slots (ccloudvm.vm.warmboot); 0: none


def _check(state: StateDir, name: str, req: CreateRequest) -> _Checked:
    user = host_user()
    mem, cpus, disk = _check_sizes(req)
    _check_disk_room(state, disk)
    mounts = _check_mounts(req.mounts, user)
    _check_drives(req.drives)
    _check_ports(req.ports, allocate_host_ip({s.host_ip for s in all_states(state)}))
    if req.driver == "libvirt":  # the URI answers; no domain of that name is someone else's
        libvirt_driver.check_remote_request(req.connect, mounts, req.drives, req.ports)
        libvirt_driver.check_create(req.connect, name, state.instance_dir(name))
    require_tool("qemu-system-x86_64")
    require_tool("qemu-img")
    return _Checked(name, user, mem, cpus, disk, mounts)


@dataclass(frozen=True)
class Booted:
    """A new instance, ready; `target` is the SSH connection its readiness was seen on."""

    inst: InstanceState
    target: SSHTarget


@contextmanager
def ready(state: StateDir, req: CreateRequest) -> Iterator[Booted]:
    """Check, make and boot the instance named `req.name` (claim_name checked it) until
    it is ready; the SSH connection stays open until the block ends."""
    if not req.name:
        raise ValueError("ready() needs the name claim_name() returned")
    checked = _check(state, req.name, req)
    inst, target = _make(state, req, checked)
    with closing(target):
        yield Booted(inst, target)


def create(state: StateDir, req: CreateRequest) -> InstanceState:
    """Make a new instance and boot it until it is ready; return its record."""
    with ready(state, replace(req, name=claim_name(state, req.name))) as booted:
        return booted.inst


def _make(
    state: StateDir, req: CreateRequest, checked: _Checked
) -> tuple[InstanceState, SSHTarget]:
    """The steps that make the instance, in order, each undone in reverse on failure."""
    files = files_of(state, checked.name)
    with ExitStack() as undo:
        _make_folder(files, checked.name)
        undo.callback(shutil.rmtree, files.dir, ignore_errors=True)  # with all that is in it
        # Listed as "creating" from now on, the image download included (issue 10).
        mark_creating(files)
        base = images.ensure_image(state, req.image)
        checked = _slotted(req, _sized_for(state, req, checked, base), base)
        host_ip = reserve_host_ip(state, files)  # a file in the folder: undone with it
        with instance_lock(files):
            inst = _record(req, checked, base, host_ip)
            _write_identity(state, files, inst, req, checked)
            # A QEMU that refuses to start leaves nothing worth keeping; a guest that
            # started but is not ready stays for `logs` and `connect`.
            undo.callback(_discard_machine, state, files)
            _first_boot(state, files, inst, base)
            started = undo.pop_all()
            try:
                target = boot.wait_ready(state, files, inst, req.timeout)
                clear_creating(files)
            except Exception:
                raise  # the guest stays for inspection
            except BaseException:
                started.close()  # interrupted: the machine and the folder go (under the lock)
                raise
    if req.proxy:
        ui.info(f"proxy: {req.proxy}")
    return inst, target


def _make_folder(files: InstanceFiles, name: str) -> None:
    try:
        files.dir.mkdir(parents=True)
    except FileExistsError:  # made since claim_name looked
        raise _taken(name) from None
    files.dir.chmod(0o700)


def _sized_for(
    state: StateDir, req: CreateRequest, checked: _Checked, base: images.BaseImage
) -> _Checked:
    """Default sizes depend on the accelerator (cached per host boot; no extra probe); the
    disk can be no smaller than the image's."""
    mem, cpus, disk = checked.mem, checked.cpus, checked.disk
    if req.mem_mib is None or req.cpus is None:
        acc = accel.detect(mode=req.accel_mode, run_dir=state.run, probe_kernel=base.kernel)
        mem, cpus, disk = _check_sizes(req, kvm=acc.is_kvm)
    if disk < _disk_virtual_size_gib(base.disk):
        raise UsageError(
            f"--disk {disk} GiB is smaller than the image {req.image} ({_disk_virtual_size_gib(base.disk):.1f} GiB)"
        )
    return replace(checked, mem=mem, cpus=cpus, disk=disk)


def _slotted(req: CreateRequest, checked: _Checked, base: images.BaseImage) -> _Checked:
    """Images whose guest can wait for its seed start from a snapshot (ccloudvm.vm.warmboot);
    their instances get the fixed mount slots such a snapshot's guest already knows.
    (Not under libvirt: a snapshot is loaded over QMP, which libvirt keeps to itself.)"""
    mounts = checked.mounts
    slots = warmboot.MOUNT_SLOTS if warmboot.fits(base, mounts, req.drives) else 0
    slots = slots if req.driver == "qemu" else 0
    return replace(checked, mounts=warmboot.slot_mounts(mounts), slots=slots) if slots else checked


def _record(
    req: CreateRequest, checked: _Checked, base: images.BaseImage, host_ip: str
) -> InstanceState:
    return InstanceState(
        name=checked.name,
        workload=req.workload,
        image=warm.image_ref(base),
        mem_mib=checked.mem,
        cpus=checked.cpus,
        disk_gib=checked.disk,
        host_ip=host_ip,
        ssh_port=pick_ssh_port(host_ip),
        guest_user=checked.user.guest_name,
        accel_mode=req.accel_mode,
        nested=req.nested,
        ports=[str(p) for p in req.ports],
        mounts=[InstanceState.mount_record(m) for m in checked.mounts],
        drives=[str(d) for d in req.drives],
        workload_ref=req.workload_ref or req.workload,
        propagate_proxy=req.propagate_proxy,
        proxy=req.proxy,
        mount_slots=checked.slots,
        driver=req.driver,
        connect=req.connect,
    )


def _write_identity(
    state: StateDir, files: InstanceFiles, inst: InstanceState, req: CreateRequest,
    checked: _Checked,
) -> None:  # fmt: skip
    """The keys, the pinned host key, the instance id and the cloud-init seed."""
    user = checked.user
    user_key = keys.ensure_user_key(state)
    host_key = keys.generate_ed25519(f"ccloudvm-{inst.name}")
    keys.write_keypair(host_key, files.host_key)
    files.known_hosts.write_text(
        known_hosts_line(inst.host_ip, inst.ssh_port, host_key.public_openssh) + "\n"
    )
    instance_id = f"{inst.name}-{uuid.uuid4().hex[:12]}"
    files.instance_id.write_text(instance_id + "\n")
    seed.write_seed_iso(
        files.seed,
        seed.SeedConfig(
            hostname=inst.name,
            user_name=user.guest_name,
            uid=user.guest_uid,
            gid=user.guest_gid,
            home=user.guest_home,
            authorized_keys=[user_key.public_openssh],
            host_key=host_key,
            mounts=checked.mounts,
            chown_mounts=user.is_root,
            extra_user_data=req.user_data,
        ),
        instance_id,
    )


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
