from __future__ import annotations

from pathlib import Path

from ccloudvm.core.specs import DriveSpec, MountSpec, PortSpec
from ccloudvm.vm.accel import Acceleration
from ccloudvm.vm.qemu import DirectBoot, MachineConfig, command_line, escape


def _config(**overrides: object) -> MachineConfig:
    values: dict[str, object] = dict(
        name="dev", accel=Acceleration("tcg", False, "test"), nested=False, mem_mib=2048, cpus=2,
        disk=Path("/s/i/dev/disk.qcow2"), seed=Path("/s/i/dev/seed.iso"), host_ip="127.77.0.2",
        ssh_port=10022, qmp_socket=Path("/s/i/dev/qmp.sock"), serial_log=Path("/s/i/dev/serial.log"),
        pidfile=Path("/s/i/dev/qemu.pid"),
    )  # fmt: skip
    values.update(overrides)
    return MachineConfig(**values)  # type: ignore[arg-type]


def _option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_ports_forward_on_loopback_only_ssh_on_the_instance_address() -> None:
    ports = (PortSpec(8080, 80), PortSpec(9090, 90, "127.0.0.5"))
    netdev = _option(command_line("qemu", _config(ports=ports)), "-netdev")[0]
    assert "hostfwd=tcp:127.77.0.2:10022-:22" in netdev
    assert "hostfwd=tcp:127.0.0.1:8080-:80" in netdev  # what localhost:8080 reaches
    assert "hostfwd=tcp:127.0.0.5:9090-:90" in netdev
    assert "0.0.0.0" not in netdev and "hostfwd=tcp::" not in netdev


def test_sizes_accel_qmp_serial_and_daemonize() -> None:
    argv = command_line("qemu", _config())
    assert _option(argv, "-m") == ["2048"] and _option(argv, "-smp") == ["2"]
    assert _option(argv, "-accel") == ["tcg,thread=multi"] and _option(argv, "-cpu") == ["max"]
    assert _option(argv, "-qmp") == ["unix:/s/i/dev/qmp.sock,server=on,wait=off"]
    assert _option(argv, "-serial") == ["file:/s/i/dev/serial.log"]
    assert "-daemonize" in argv and "-nodefaults" in argv
    assert "virtio-rng-pci" in _option(argv, "-device")
    # A new VM generation ID each start: a guest restored from a snapshot reseeds its RNG.
    assert "vmgenid" in _option(argv, "-device")
    # Named drives: a warm boot grows the disk over QMP by its name.
    assert [d.split(",")[0] for d in _option(argv, "-drive")] == ["id=disk", "id=seed"]


def test_mounts_become_9p_devices_with_escaped_paths() -> None:
    mount = MountSpec(Path("/home/me/a,b"), "/src", "mount0", "mapped-xattr", readonly=True)
    argv = command_line("qemu", _config(mounts=(mount,)))
    assert _option(argv, "-fsdev") == [
        "local,id=mount0,path=/home/me/a,,b,security_model=mapped-xattr,readonly=on"
    ]
    assert "virtio-9p-pci,fsdev=mount0,mount_tag=mount0" in _option(argv, "-device")


def test_extra_drives_go_to_the_command_line_as_they_were_given() -> None:
    drives = (
        DriveSpec(Path("/data/my,disk.img"), "raw", "cache=none"),  # a workload's vm.drives
        DriveSpec.parse("/data/x.img"),  # a --drive without format: QEMU probes it
    )
    assert _option(command_line("qemu", _config(extra_drives=drives)), "-drive")[2:] == [
        "file=/data/my,,disk.img,format=raw,cache=none,if=virtio",
        "file=/data/x.img,if=virtio",
    ]


def test_direct_kernel_boot() -> None:
    boot = DirectBoot(Path("/c/vmlinuz"), Path("/c/initrd.img"), "root=/dev/vda console=ttyS0")
    argv = command_line("qemu", _config(boot=boot))
    assert _option(argv, "-kernel") == ["/c/vmlinuz"]
    assert _option(argv, "-initrd") == ["/c/initrd.img"]
    assert _option(argv, "-append") == ["root=/dev/vda console=ttyS0"]


def test_kvm_passes_the_host_cpu_through() -> None:
    argv = command_line("qemu", _config(accel=Acceleration("kvm", True, "t"), nested=True))
    assert _option(argv, "-accel") == ["kvm"] and _option(argv, "-cpu") == ["host"]


def test_escape() -> None:
    assert escape("a,b,,c") == "a,,b,,,,c"
