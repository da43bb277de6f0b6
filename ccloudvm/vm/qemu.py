"""The QEMU command line, built in one place from a plain description of the machine.

One option and its value per line; commas in user-supplied values are escaped as `,,`
(QEMU's own rule); `-nodefaults -no-user-config` so nothing appears that we did not ask for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ccloudvm.core.specs import DriveSpec, MountSpec, PortSpec
from ccloudvm.guest.seed import GUEST_MAC
from ccloudvm.vm.accel import Acceleration


def escape(value: str | Path) -> str:
    """Escape a value for a QEMU comma-separated option list."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class DirectBoot:
    kernel: Path
    initrd: Path | None
    cmdline: str


@dataclass(frozen=True)
class MachineConfig:
    name: str
    accel: Acceleration
    nested: bool
    mem_mib: int
    cpus: int
    disk: Path
    seed: Path
    host_ip: str
    ssh_port: int
    qmp_socket: Path
    serial_log: Path
    pidfile: Path
    ports: tuple[PortSpec, ...] = ()
    mounts: tuple[MountSpec, ...] = ()  # security_model already resolved
    boot: DirectBoot | None = None
    extra_drives: tuple[DriveSpec, ...] = field(default=())  # --drive and vm.drives


def command_line(qemu: str, cfg: MachineConfig) -> list[str]:
    forwards = [f"hostfwd=tcp:{cfg.host_ip}:{cfg.ssh_port}-:22"]
    forwards += [f"hostfwd=tcp:{p.bind_address}:{p.host}-:{p.guest}" for p in cfg.ports]
    argv = [
        qemu,
        "-name", escape(cfg.name),
        "-nodefaults",
        "-no-user-config",
        "-machine", "q35",
        *cfg.accel.qemu_args(nested_wanted=cfg.nested),
        "-m", str(cfg.mem_mib),
        "-smp", str(cfg.cpus),
        "-display", "none",
        "-serial", f"file:{escape(cfg.serial_log)}",
        "-qmp", f"unix:{escape(cfg.qmp_socket)},server=on,wait=off",
        "-pidfile", str(cfg.pidfile),
        "-daemonize",
        # Tell cloud-init its datasource up front, so it does not search for one.
        "-smbios", "type=1,serial=ds=nocloud",
        "-drive", f"id=disk,file={escape(cfg.disk)},if=virtio,format=qcow2,discard=unmap",
        "-drive", f"id=seed,file={escape(cfg.seed)},if=virtio,media=cdrom,readonly=on,format=raw",
        "-netdev", "user,id=net0," + ",".join(forwards),
        "-device", f"virtio-net-pci,netdev=net0,mac={GUEST_MAC}",
        "-device", "virtio-rng-pci",
        # A new generation ID on every start: a guest restored from a warm-boot snapshot
        # reseeds its random number generator instead of repeating the snapshot's.
        "-device", "vmgenid",
    ]  # fmt: skip
    for mount in cfg.mounts:
        argv += [
            "-fsdev",
            f"local,id={mount.tag},path={escape(mount.host_path)},"
            f"security_model={mount.security_model or 'none'}"
            + (",readonly=on" if mount.readonly else ""),
            "-device", f"virtio-9p-pci,fsdev={mount.tag},mount_tag={mount.tag}",
        ]  # fmt: skip
    for drive in cfg.extra_drives:
        argv += ["-drive", _drive(drive)]
    if cfg.boot is not None:
        argv += ["-kernel", str(cfg.boot.kernel)]
        if cfg.boot.initrd is not None:
            argv += ["-initrd", str(cfg.boot.initrd)]
        argv += ["-append", cfg.boot.cmdline]
    return argv


def _drive(drive: DriveSpec) -> str:
    value = f"file={escape(drive.path)}" + (f",format={drive.format}" if drive.format else "")
    return value + (f",{drive.options}" if drive.options else "") + ",if=virtio"
