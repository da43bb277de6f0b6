"""Warm boot's rules that need no VM: what a snapshot is keyed by, the fixed mount slots
and seed size that make instances look alike to the guest, and when it applies."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from ccloudvm.core.specs import MountSpec, PortSpec
from ccloudvm.images.catalog import BaseImage
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import warmboot
from ccloudvm.vm.accel import Acceleration
from ccloudvm.vm.qemu import DirectBoot, MachineConfig, command_line

QEMU = "QEMU emulator version 7.2.22"


def _image(tmp_path: Path, warm: bool = True) -> BaseImage:
    return BaseImage(
        name="debian-12", key="k", directory=tmp_path / "debian-12-k",
        disk=tmp_path / "debian-12-k" / "disk.qcow2", kernel=None, initrd=None, cmdline=None,
        kind="built", warm_boot=warm,
    )  # fmt: skip


def _machine(state: StateDir, **overrides: object) -> MachineConfig:
    values: dict[str, object] = dict(
        name="dev", accel=Acceleration("tcg", False, "test"), nested=False, mem_mib=1024, cpus=2,
        disk=Path("/s/dev/disk.qcow2"), seed=Path("/s/dev/seed.iso"), host_ip="127.77.0.2",
        ssh_port=10022, qmp_socket=Path("/s/dev/qmp"), serial_log=Path("/s/dev/serial.log"),
        pidfile=Path("/s/dev/qemu.pid"),
        mounts=tuple(warmboot.pad_mounts(state, [], warmboot.MOUNT_SLOTS)),
        boot=DirectBoot(Path("/c/vmlinuz"), Path("/c/initrd.img"), "root=/dev/vda"),
    )  # fmt: skip
    values.update(overrides)
    return MachineConfig(**values)  # type: ignore[arg-type]


def test_snapshot_key_ignores_what_only_the_host_sees(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    one = _machine(state)
    shares = warmboot.slot_mounts([MountSpec(tmp_path, "/src", "hostgo", "mapped-xattr", False)])
    other = _machine(
        state, name="other", disk=Path("/t/disk.qcow2"), seed=Path("/t/seed.iso"),
        host_ip="127.77.0.9", ssh_port=10023, qmp_socket=Path("/t/q"),
        serial_log=Path("/t/s"), pidfile=Path("/t/p"), ports=(PortSpec(8080, 80),),
        mounts=tuple(warmboot.pad_mounts(state, shares, warmboot.MOUNT_SLOTS)),
    )  # fmt: skip
    assert warmboot.shape_key(one, QEMU) == warmboot.shape_key(other, QEMU)


@pytest.mark.parametrize(
    "change",
    [
        {"mem_mib": 2048},
        {"cpus": 1},
        {"accel": Acceleration("kvm", True, "test")},
        {"boot": DirectBoot(Path("/c/vmlinuz-2"), Path("/c/initrd.img"), "root=/dev/vda")},
        {"boot": DirectBoot(Path("/c/vmlinuz"), Path("/c/initrd.img"), "root=/dev/vda quiet")},
    ],
)
def test_snapshot_key_follows_what_the_guest_sees(
    tmp_path: Path, change: dict[str, object]
) -> None:
    state = StateDir(tmp_path)
    base = _machine(state)
    assert warmboot.shape_key(base, QEMU) != warmboot.shape_key(
        dataclasses.replace(base, **change),
        QEMU,  # type: ignore[arg-type]
    )


def test_snapshot_key_follows_the_qemu_version(tmp_path: Path) -> None:
    machine = _machine(StateDir(tmp_path))
    assert warmboot.shape_key(machine, QEMU) != warmboot.shape_key(machine, "QEMU 8.2.0")


def test_mounts_take_the_fixed_slots_and_spares_fill_the_rest(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    mine = [
        MountSpec(tmp_path / "a", "/a", "hostgo", "none", False),
        MountSpec(tmp_path / "b", "/b", "mount0", "none", True),
    ]
    slotted = warmboot.slot_mounts(mine)
    assert [m.tag for m in slotted] == ["ccvm0", "ccvm1"]
    assert [(m.host_path, m.guest_path) for m in slotted] == [
        (tmp_path / "a", "/a"),
        (tmp_path / "b", "/b"),
    ]
    padded = warmboot.pad_mounts(state, slotted, warmboot.MOUNT_SLOTS)
    assert [m.tag for m in padded] == ["ccvm0", "ccvm1", "ccvm2", "ccvm3"]
    spares = padded[2:]
    assert all(m.readonly and m.host_path == warmboot.spare_folder(state) for m in spares)
    assert not any(warmboot.spare_folder(state).iterdir()), "the spare folder shares nothing"
    # Every slot is a 9p device with its fixed tag, in order, on the QEMU command line.
    argv = command_line("qemu", _machine(state, mounts=tuple(padded)))
    devices = [a for a in argv if a.startswith("virtio-9p-pci")]
    assert devices == [f"virtio-9p-pci,fsdev=ccvm{i},mount_tag=ccvm{i}" for i in range(4)]


def test_which_instances_can_start_warm(tmp_path: Path) -> None:
    image = _image(tmp_path)
    four = [MountSpec(tmp_path, f"/m{i}", f"t{i}", "none", False) for i in range(4)]
    assert warmboot.fits(image, [], [])
    assert warmboot.fits(image, four, [])
    assert not warmboot.fits(image, [*four, four[0]], []), "more mounts than slots"
    assert not warmboot.fits(image, [], ["/x.img,format=raw"]), "extra drives"
    assert not warmboot.fits(_image(tmp_path, warm=False), [], []), "a stock cloud image"


def test_seed_is_padded_to_the_snapshot_seed_size(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    seed.write_bytes(b"x" * 70000)
    assert warmboot.pad_seed(seed)
    assert seed.stat().st_size == warmboot.SEED_SIZE
    assert seed.read_bytes()[:70000] == b"x" * 70000
    big = tmp_path / "big.iso"
    big.write_bytes(b"y" * (warmboot.SEED_SIZE + 1))
    assert not warmboot.pad_seed(big)
    assert big.stat().st_size == warmboot.SEED_SIZE + 1, "a seed that does not fit is left as it is"


@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("0", False), ("off", False)])
def test_environment_switch(monkeypatch: pytest.MonkeyPatch, value: str | None, on: bool) -> None:
    if value is None:
        monkeypatch.delenv(warmboot.ENV_SWITCH, raising=False)
    else:
        monkeypatch.setenv(warmboot.ENV_SWITCH, value)
    assert warmboot.enabled() is on


def test_the_image_waits_with_the_marker_the_host_expects(tmp_path: Path) -> None:
    from ccloudvm.images import catalog
    from ccloudvm.state.paths import StateDir, resource_dir

    recipe = (resource_dir("images") / "debian-12.yaml").read_text()
    build = catalog.load_definition(StateDir(tmp_path), "debian-12").build
    assert build is not None  # its files, the script named by module among them
    assert f'WAITING_MARKER = "{warmboot.WAITING_MARKER}"' in "\n".join(build.files.values())
    assert "warm: true" in recipe


def test_a_snapshot_boot_killed_half_way_is_cleaned_up_next_time(tmp_path: Path) -> None:
    import subprocess

    image_folder = tmp_path / "warm" / "debian-12-k"
    done = image_folder / "0123456789abcdef"
    done.mkdir(parents=True)
    (done / warmboot.META).write_text("{}")
    unfinished = image_folder / ".making-x1"
    unfinished.mkdir()
    (unfinished / warmboot.DISK).write_bytes(b"partial")
    # A pid file naming a process that is not this folder's QEMU: never killed.
    stranger = subprocess.Popen(["sleep", "30"])  # noqa: S603,S607
    try:
        (unfinished / "qemu.pid").write_text(f"{stranger.pid}\n")
        assert warmboot.remove_unfinished(image_folder) == [unfinished]
        assert not unfinished.exists() and (done / warmboot.META).is_file()
        assert stranger.poll() is None, "only QEMU processes of the unfinished folder are killed"
    finally:
        stranger.kill()
        stranger.wait()


def test_background_snapshots_follow_their_switch_and_warm_boot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(warmboot.ENV_BACKGROUND, raising=False)
    monkeypatch.delenv(warmboot.ENV_SWITCH, raising=False)
    assert warmboot.background_enabled()
    monkeypatch.setenv(warmboot.ENV_BACKGROUND, "0")
    assert not warmboot.background_enabled()
    monkeypatch.setenv(warmboot.ENV_BACKGROUND, "1")
    monkeypatch.setenv(warmboot.ENV_SWITCH, "off")
    assert not warmboot.background_enabled()  # no warm boot: no snapshots at all


def test_a_background_job_is_detached_and_logs_its_outcome(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    image = BaseImage(
        name="no-such-image", key="k", directory=tmp_path / "cache/images/no-such-image-k",
        disk=tmp_path / "d", kernel=None, initrd=None, cmdline=None, kind="saved",
    )  # fmt: skip
    log = warmboot.start_in_background(state, image, ["--mem", "1024", "--cpus", "1"])
    deadline = time.monotonic() + 60
    while "error:" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log.read_text()
    assert "--mem 1024 --cpus 1" in text.splitlines()[0]
    assert "no-such-image" in text and "Traceback" not in text, text
