"""The libvirt domain XML, built from the same MachineConfig that qemu.py turns into a
command line: one description of the machine, two ways to run it.

What libvirt models, libvirt gets as XML: q35, direct kernel boot, the qcow2 overlay with
its backing store, the seed as a read-only virtio disk (the guest sees /dev/vdb as under
the QEMU driver), 9p mounts, the serial console to a file, virtio-rng, a generation ID,
the SMBIOS serial that names cloud-init's datasource, no graphics.

The one thing it gets as QEMU arguments (<qemu:commandline>) is the network. libvirt 9.0
can forward ports on a user-mode NIC only with the passt backend, and passt gives the
guest the host's own addresses instead of slirp's 10.0.2.0/24, where the guest reaches
the host (10.0.2.2, see ccloudvm.guest.proxy) as under the QEMU driver. So the NIC is the
QEMU driver's own `-netdev user,hostfwd=...` with the SSH forward on the instance's
loopback address; it sits on its own slot of pcie.0 (0x10), away from the root ports
libvirt allocates from slot 1 (a trial with slot 1 clashed). The same arguments add
`-pidfile` in the instance folder, so local checks that look for the instance's QEMU
(status, logs --follow) find it whichever driver started it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ccloudvm.core.errors import UsageError
from ccloudvm.core.specs import DriveSpec
from ccloudvm.guest.seed import GUEST_MAC
from ccloudvm.vm.qemu import MachineConfig

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
CCLOUDVM_NS = "https://github.com/intel/ccloudvm/libvirt/1"  # marks the domains we made
NIC_ADDRESS = "bus=pcie.0,addr=0x10"

# QEMU's 9p security_model -> libvirt's accessmode (libvirt maps squash to "none").
ACCESS_MODES = {
    "mapped-xattr": "mapped",
    "mapped-file": "mapped",
    "passthrough": "passthrough",
    "none": "squash",
}

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("ccloudvm", CCLOUDVM_NS)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _disk(
    devices: ET.Element, path: Path, target: str, fmt: str, *, readonly: bool = False
) -> ET.Element:
    disk = _sub(devices, "disk", type="file", device="disk")
    driver = _sub(disk, "driver", name="qemu", type=fmt)
    if fmt == "qcow2":
        driver.set("discard", "unmap")
    _sub(disk, "source", file=str(path))
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")
    return disk


def drive_source(drive: DriveSpec) -> tuple[str, str]:
    """(path, format) of a drive (raw when not given). Other options are QEMU's own and
    mean nothing to libvirt: refused."""
    if drive.options:
        raise UsageError(
            f"--drive option {drive.options.split(',')[0]!r} is not supported by the libvirt driver",
            hint="give PATH,format=FORMAT, or use --driver qemu",
        )
    return str(drive.path), drive.format or "raw"


def domain_xml(
    cfg: MachineConfig,
    *,
    backing: Path | None = None,
    owner: str = "",
    uuid: str = "",
    emulator: str = "",
    remote: bool = False,
) -> str:
    """The domain for `cfg`. `backing` is the overlay's backing file (qcow2), `owner` the
    instance folder recorded in the metadata that marks the domain as ccloudvm's, `uuid`
    the one libvirt gave it when it was first defined (a redefinition must keep it).
    `remote`: the domain runs on another host, where cfg's paths are volumes' paths; its
    console is a pty there (read through libvirt) and it has no pid file of ours."""
    kvm = cfg.accel.is_kvm
    domain = ET.Element("domain", {"type": "kvm" if kvm else "qemu"})
    _sub(domain, "name", cfg.name)
    if uuid:
        _sub(domain, "uuid", uuid)
    _sub(domain, "description", "made by ccloudvm; 'ccloudvm delete' removes it")
    metadata = _sub(domain, "metadata")
    _sub(metadata, f"{{{CCLOUDVM_NS}}}instance", dir=owner)
    _sub(domain, "memory", str(cfg.mem_mib), unit="MiB")
    _sub(domain, "vcpu", str(cfg.cpus))
    # Tell cloud-init its datasource up front, so it does not search for one.
    sysinfo = _sub(domain, "sysinfo", type="smbios")
    _sub(_sub(sysinfo, "system"), "entry", "ds=nocloud", name="serial")
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="q35")
    if cfg.boot is not None:
        _sub(os_, "kernel", str(cfg.boot.kernel))
        if cfg.boot.initrd is not None:
            _sub(os_, "initrd", str(cfg.boot.initrd))
        _sub(os_, "cmdline", cfg.boot.cmdline)
    else:
        _sub(os_, "boot", dev="hd")
    _sub(os_, "smbios", mode="sysinfo")
    _sub(_sub(domain, "features"), "acpi")  # without it libvirt turns ACPI off: no shutdown
    # KVM: the host CPU (vmx/svm for nesting); TCG: everything QEMU can emulate (-cpu max).
    _sub(domain, "cpu", mode="host-passthrough" if kvm else "maximum")
    # A new generation ID on every start: a restored guest reseeds its RNG.
    _sub(domain, "genid")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    if emulator:
        _sub(devices, "emulator", emulator)
    disk = _disk(devices, cfg.disk, "vda", "qcow2")
    if backing is not None:
        store = _sub(disk, "backingStore", type="file")
        _sub(store, "format", type="qcow2")
        _sub(store, "source", file=str(backing))
        _sub(store, "backingStore")
    _disk(devices, cfg.seed, "vdb", "raw", readonly=True)
    for index, drive in enumerate(cfg.extra_drives):
        path, fmt = drive_source(drive)
        _disk(devices, Path(path), f"vd{chr(ord('c') + index)}", fmt)
    for mount in cfg.mounts:
        fs = _sub(
            devices,
            "filesystem",
            type="mount",
            accessmode=ACCESS_MODES[mount.security_model or "none"],
        )
        _sub(fs, "driver", type="path")
        _sub(fs, "source", dir=str(mount.host_path))
        _sub(fs, "target", dir=mount.tag)
        if mount.readonly:
            _sub(fs, "readonly")
    serial = _sub(devices, "serial", type="pty" if remote else "file")
    if not remote:
        _sub(serial, "source", path=str(cfg.serial_log))
    _sub(serial, "target", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(_sub(devices, "video"), "model", type="none")
    _sub(devices, "memballoon", model="none")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")

    forwards = [f"hostfwd=tcp:{cfg.host_ip}:{cfg.ssh_port}-:22"]
    forwards += [f"hostfwd=tcp:{p.bind_address}:{p.host}-:{p.guest}" for p in cfg.ports]
    args = [
        "-netdev", "user,id=ccnet0," + ",".join(forwards),
        "-device", f"virtio-net-pci,netdev=ccnet0,mac={GUEST_MAC},{NIC_ADDRESS}",
    ]  # fmt: skip
    if not remote:
        args += ["-pidfile", str(cfg.pidfile)]
    commandline = _sub(domain, f"{{{QEMU_NS}}}commandline")
    for arg in args:
        _sub(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def owner_of(xml: str) -> str | None:
    """The instance folder a domain's metadata names, or None: not made by ccloudvm."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    mark = root.find(f"metadata/{{{CCLOUDVM_NS}}}instance")
    return None if mark is None else mark.get("dir")
