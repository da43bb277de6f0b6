"""Create: make a new instance and boot it until it is ready.

Create validates everything before it makes anything; if it fails before QEMU starts,
nothing is left behind; if the guest fails to become ready, the instance stays for
inspection (`logs`, `connect`) and `delete` removes it.
"""

from __future__ import annotations

import shutil
import uuid

from ccloudvm.core import ui
from ccloudvm.core.errors import UsageError
from ccloudvm.core.hostinfo import host_user
from ccloudvm.core.proc import require_tool
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
from ccloudvm.remote.ssh import known_hosts_line
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
from ccloudvm.vm import accel, warmboot


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
