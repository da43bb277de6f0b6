"""The libvirt domain XML: valid by libvirt's own schema (virt-xml-validate), and the
same machine as the QEMU command line built from the same MachineConfig."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.core.specs import DriveSpec, MountSpec, PortSpec
from ccloudvm.vm.accel import Acceleration
from ccloudvm.vm.libvirt_xml import QEMU_NS, domain_xml, drive_source, owner_of
from ccloudvm.vm.qemu import DirectBoot, MachineConfig
from tests.unit.xml_schema import needs_validator, validate


def _config(**overrides: object) -> MachineConfig:
    values: dict[str, object] = dict(
        name="dev", accel=Acceleration("tcg", False, "test"), nested=False, mem_mib=2048, cpus=2,
        disk=Path("/s/i/dev/disk.qcow2"), seed=Path("/s/i/dev/seed.iso"), host_ip="127.77.0.2",
        ssh_port=10022, qmp_socket=Path("/s/i/dev/qmp.sock"), serial_log=Path("/s/i/dev/serial.log"),
        pidfile=Path("/s/i/dev/qemu.pid"),
        boot=DirectBoot(Path("/c/vmlinuz"), Path("/c/initrd.img"), "root=/dev/vda console=ttyS0"),
    )  # fmt: skip
    values.update(overrides)
    return MachineConfig(**values)  # type: ignore[arg-type]


FULL = dict(
    ports=(PortSpec(8080, 80), PortSpec(9090, 90, "127.0.0.5")),
    mounts=(
        MountSpec(Path("/home/u/src"), "/mnt/src", "m0", "mapped-xattr"),
        MountSpec(Path("/srv/ro"), "/mnt/ro", "m1", "none", readonly=True),
    ),
    extra_drives=(
        DriveSpec.parse("/data/extra.img,format=raw"),
        DriveSpec.parse("/data/b,,c.qcow2,format=qcow2"),
    ),
)


@needs_validator
@pytest.mark.parametrize(
    "cfg",
    [
        _config(),
        _config(**FULL),
        _config(accel=Acceleration("kvm", True, "test"), nested=True, boot=None),
    ],
    ids=["plain", "ports-mounts-drives", "kvm-no-kernel"],
)
def test_the_domain_is_valid_by_libvirts_schema(cfg: MachineConfig, tmp_path: Path) -> None:
    validate(
        domain_xml(cfg, backing=Path("/cache/base.qcow2"), owner="/s/i/dev"), "domain", tmp_path
    )


def _qemu_args(root: ET.Element) -> list[str]:
    return [a.get("value", "") for a in root.iter(f"{{{QEMU_NS}}}arg")]


def test_ssh_forward_on_the_instance_address_and_ports_on_loopback_only() -> None:
    args = _qemu_args(ET.fromstring(domain_xml(_config(**FULL))))
    netdev = args[args.index("-netdev") + 1]
    assert netdev.startswith("user,")  # slirp: the guest reaches the host at 10.0.2.2
    assert "hostfwd=tcp:127.77.0.2:10022-:22" in netdev
    assert "hostfwd=tcp:127.0.0.1:8080-:80" in netdev
    assert "hostfwd=tcp:127.0.0.5:9090-:90" in netdev
    assert "0.0.0.0" not in netdev and "hostfwd=tcp::" not in netdev
    nic = args[args.index("-device") + 1]
    # its own slot on pcie.0: libvirt's root ports take slot 1 onwards
    assert "netdev=ccnet0" in nic and "bus=pcie.0,addr=0x10" in nic
    assert args[args.index("-pidfile") + 1] == "/s/i/dev/qemu.pid"


def test_machine_as_the_qemu_driver_describes_it() -> None:
    root = ET.fromstring(domain_xml(_config(**FULL), backing=Path("/cache/base.qcow2")))
    assert root.get("type") == "qemu"  # TCG
    assert root.findtext("memory") == "2048" and root.findtext("vcpu") == "2"
    assert root.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]
    assert root.findtext("os/kernel") == "/c/vmlinuz"
    assert root.findtext("os/cmdline") == "root=/dev/vda console=ttyS0"
    assert root.findtext("sysinfo/system/entry[@name='serial']") == "ds=nocloud"
    assert root.find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]
    disks = root.findall("devices/disk")
    assert [d.find("source").get("file") for d in disks] == [  # type: ignore[union-attr]
        "/s/i/dev/disk.qcow2", "/s/i/dev/seed.iso", "/data/extra.img", "/data/b,c.qcow2",
    ]  # fmt: skip
    assert disks[0].find("backingStore/source").get("file") == "/cache/base.qcow2"  # type: ignore[union-attr]
    assert disks[1].find("readonly") is not None
    fss = root.findall("devices/filesystem")
    assert [(f.get("accessmode"), f.find("target").get("dir")) for f in fss] == [  # type: ignore[union-attr]
        ("mapped", "m0"), ("squash", "m1"),
    ]  # fmt: skip
    assert fss[1].find("readonly") is not None
    assert root.find("devices/serial/source").get("path") == "/s/i/dev/serial.log"  # type: ignore[union-attr]
    assert root.find("devices/graphics") is None
    assert root.find("devices/interface") is None  # no libvirt network, so no virbr0


def test_kvm_passes_the_host_cpu_through() -> None:
    root = ET.fromstring(domain_xml(_config(accel=Acceleration("kvm", True, "test"))))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]


def test_the_metadata_marks_the_domain_as_ours() -> None:
    assert owner_of(domain_xml(_config(), owner="/s/i/dev")) == "/s/i/dev"
    assert owner_of("<domain type='kvm'><name>dev</name></domain>") is None
    assert owner_of("not xml") is None


def test_drive_options_libvirt_cannot_express_are_refused() -> None:
    assert drive_source(DriveSpec.parse("/d/x.img")) == ("/d/x.img", "raw")
    assert drive_source(DriveSpec.parse("/d/a,,b.img,format=qcow2")) == ("/d/a,b.img", "qcow2")
    with pytest.raises(UsageError, match="cache=none.*not supported by the libvirt driver"):
        drive_source(DriveSpec.parse("/d/x.img,cache=none"))
