"""Starting an instance's machine: its QEMU configuration, its accelerator, the launch
(cold, or warm from a snapshot), the wait until its guest is ready, the SSH connection.

What every command that runs an instance's machine shares (start, create, resume, a
snapshot's restore), so none of them has to reach up into ccloudvm.instance.lifecycle.
"""

from __future__ import annotations

import time
from pathlib import Path

from ccloudvm.core import ui
from ccloudvm.core.specs import DriveSpec
from ccloudvm.instance.checks import _check_ports
from ccloudvm.remote.ssh import SSHTarget, known_hosts_line, wait_for_ssh
from ccloudvm.state.instance_state import (
    InstanceFiles,
    InstanceState,
    files_of,
    pick_ssh_port,
    port_free,
    save_state,
)
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import accel, drivers, qemu, ready, warmboot
from ccloudvm.vm.machine import LaunchFailed


def machine_config(
    state: StateDir, files: InstanceFiles, inst: InstanceState, acc: accel.Acceleration
) -> qemu.MachineConfig:
    boot = None
    if inst.image.kernel:
        boot = qemu.DirectBoot(
            kernel=Path(inst.image.kernel),
            initrd=Path(inst.image.initrd) if inst.image.initrd else None,
            cmdline=inst.image.cmdline or "root=/dev/vda rw console=ttyS0",
        )
    return qemu.MachineConfig(
        name=inst.name,
        accel=acc,
        nested=inst.nested,
        mem_mib=inst.mem_mib,
        cpus=inst.cpus,
        disk=files.disk,
        seed=files.seed,
        host_ip=inst.host_ip,
        ssh_port=inst.ssh_port,
        qmp_socket=files.qmp,
        serial_log=files.serial,
        pidfile=files.pidfile,
        ports=tuple(inst.port_specs()),
        mounts=tuple(
            warmboot.pad_mounts(state, inst.mount_specs(), inst.mount_slots)
            if inst.mount_slots
            else inst.mount_specs()
        ),
        boot=boot,
        extra_drives=tuple(DriveSpec.parse(d) for d in inst.drives),
    )


_warned_tcg: list[bool] = []


def acceleration(state: StateDir, inst: InstanceState) -> accel.Acceleration:
    kernel = Path(inst.image.kernel) if inst.image.kernel else None
    if drivers.is_remote(inst):  # the VM runs there: what that host offers counts
        acc = drivers.remote_acceleration(files_of(state, inst.name), inst)
    else:
        acc = accel.detect(mode=inst.accel_mode, run_dir=state.run, probe_kernel=kernel)
    if not acc.is_kvm and inst.accel_mode == "auto" and not _warned_tcg:
        _warned_tcg.append(True)  # once per command, however many machines it starts
        ui.warn(
            f"KVM is not usable ({acc.reason}); using software emulation (TCG), which is slower"
        )
    if inst.nested and not acc.nested:
        ui.warn("this workload wants nested virtualisation, which this host does not offer")
    return acc


def launch(
    state: StateDir,
    files: InstanceFiles,
    inst: InstanceState,
    acc: accel.Acceleration | None = None,
    restore: warmboot.Snapshot | None = None,
) -> None:
    """Start the machine for the instance: a cold boot, or a warm one from `restore`."""
    driver = drivers.for_instance(files, inst)
    acc = acc or acceleration(state, inst)
    for stale in (files.qmp, files.pidfile):
        stale.unlink(missing_ok=True)
    if files.serial.exists():
        files.serial.replace(files.serial.with_suffix(".log.1"))
    if not drivers.is_remote(inst) and not port_free(inst.host_ip, inst.ssh_port):
        inst.ssh_port = pick_ssh_port(inst.host_ip, inst.ssh_port + 1)
        # The pinned host key names the port (system ssh reads it): pin it on the new one.
        public = files.host_key_pub.read_text().strip()
        files.known_hosts.write_text(known_hosts_line(inst.host_ip, inst.ssh_port, public) + "\n")
    _check_ports(inst.port_specs(), inst.host_ip)
    driver.define(machine_config(state, files, inst, acc), restore)
    inst.accel_used = acc.accel
    inst.desired = "running"
    save_state(files, inst)
    try:
        driver.start()
    except LaunchFailed:
        inst.desired = "stopped"
        save_state(files, inst)
        raise


def wait_ready(
    state: StateDir, files: InstanceFiles, inst: InstanceState, timeout: float
) -> SSHTarget:
    deadline = time.monotonic() + timeout
    start = time.monotonic()

    alive = drivers.for_instance(files, inst).is_running

    with ui.spinner(f"Booting {inst.name}", stage_lines=True) as status:
        ready.wait_for_marker(
            files.serial, deadline=deadline, is_alive=alive,
            on_stage=ready.report_stage(status), name=inst.name,
        )  # fmt: skip
        status.update("connecting over SSH")
        target = ssh_target_for(state, inst, deadline=deadline)
    result = ready.console_result(files.serial)
    if result is None:  # an image that does not print it: ask over SSH
        code, result = target.run_capture(["cat", "/run/cloud-init/result.json"])
        result = result if code == 0 else "{}"
    errors = ready.cloud_init_errors(result)
    if errors:
        target.close()
        raise ready.BootFailed(
            f"cloud-init reported errors in {inst.name!r}: {'; '.join(errors)[:300]}; "
            "last console lines:\n" + ready.log_tail(files.serial),
            hint=f"'ccloudvm logs {inst.name} --cloud-init' shows its log; the instance is "
            f"running for 'ccloudvm connect {inst.name}', and 'ccloudvm delete {inst.name}' removes it",
        )
    ui.info(f"{inst.name} is ready ({time.monotonic() - start:.1f} s, {inst.accel_used})")
    return target


def ssh_target_for(state: StateDir, inst: InstanceState, *, deadline: float) -> SSHTarget:
    """Connect to the instance with its pinned host key, retrying until `deadline`."""
    host_key = files_of(state, inst.name).host_key_pub.read_text().strip()
    jump = None
    if drivers.is_remote(inst):  # its SSH forward listens on that host's loopback
        from ccloudvm.vm.libvirt_uri import jump_host

        jump = jump_host(inst.connect)
    return wait_for_ssh(
        name=inst.name, host=inst.host_ip, port=inst.ssh_port, user=inst.guest_user,
        key_path=state.private_key, host_key_public=host_key, deadline=deadline, jump=jump,
    )  # fmt: skip


def force_off(files: InstanceFiles) -> None:
    drivers.force_off(files)
