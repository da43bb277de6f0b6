"""libvirt on another host (qemu+ssh://): what its URI says, the domain it is given (the
files as volumes there, the console a pty, no pid file), what the driver uploads, makes
and removes, the requests refused for it, and where drivers.py says the machine runs.
libvirt is the fake of tests/unit/fake_libvirt.py; virt-xml-validate checks the domain.
How the commands treat such an instance: tests/unit/test_remote_instance.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.core.specs import DriveSpec, MountSpec, PortSpec
from ccloudvm.remote.jump import JumpHost
from ccloudvm.state.instance_state import ImageRef, InstanceFiles, InstanceState, save_state
from ccloudvm.vm import drivers, libvirt_driver, libvirt_uri
from ccloudvm.vm.accel import Acceleration
from ccloudvm.vm.libvirt_driver import LibvirtDriver
from ccloudvm.vm.libvirt_storage import volume_name
from ccloudvm.vm.libvirt_xml import CCLOUDVM_NS, QEMU_NS, domain_xml, owner_of
from ccloudvm.vm.machine import LaunchFailed
from ccloudvm.vm.qemu import DirectBoot, MachineConfig
from tests.unit.fake_libvirt import (
    FakeDomain,
    FakeLibvirt,
    FakeLibvirtError,
    FakePool,
    FakeStream,
    install,
    pool_xml,
)
from tests.unit.xml_schema import needs_validator, validate

REMOTE = "qemu+ssh://alice@far.example:2222/system?keyfile=/k/id_far&known_hosts=/k/far_hosts"


# --- the URI --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "host", "kind"),
    [
        ("qemu:///system", "", ""),
        ("qemu:///session", "", ""),
        ("qemu+unix:///system", "", "unix"),
        ("qemu+ssh://alice@far.example/system", "far.example", "ssh"),
        ("qemu+libssh://far.example:2222/session", "far.example", "libssh"),
        ("qemu+libssh2://u@10.0.0.5/system?keyfile=/k", "10.0.0.5", "libssh2"),
        ("qemu+tcp://far.example/system", "far.example", "tcp"),
    ],
)
def test_what_a_uri_says_about_its_host(uri: str, host: str, kind: str) -> None:
    assert libvirt_uri.host_of(uri) == host
    assert libvirt_uri.is_remote(uri) is bool(host)
    assert libvirt_uri.transport(uri) == kind


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu:///session",
        "qemu:///system/",
        "qemu+unix:///session",
        "qemu+ssh://alice@far.example/system",
        "qemu+libssh://far.example/session",
        "qemu+libssh2://far.example:2222/system?keyfile=/k&known_hosts=/h",
    ],
)
def test_uris_the_driver_takes(uri: str) -> None:
    libvirt_uri.check(uri)  # no error


@pytest.mark.parametrize(
    ("uri", "message", "hint"),
    [
        ("lxc:///", "lxc:/// is not a QEMU URI", "qemu:///session"),
        ("xen+ssh://far.example/system", "is not a QEMU URI", "qemu:///session"),
        (
            "qemu+tcp://far.example/system",
            "libvirt on another host needs an SSH transport, not 'tcp' "
            "(qemu+tcp://far.example/system): SSH to the guest goes through that host",
            "qemu+ssh://USER@HOST/system",
        ),
        ("qemu+tls://far.example/system", "needs an SSH transport, not 'tls'", "qemu+libssh"),
        # no transport with a host name is TLS, libvirt's default
        ("qemu://far.example/system", "needs an SSH transport, not 'tls'", "qemu+ssh"),
        ("qemu+ext://far.example/system?command=x", "not 'ext'", "qemu+ssh"),
        ("qemu+ssh://far.example/", "names neither /system nor /session", "/system or /session"),
        ("qemu:///embed?root=/tmp/x", "names neither /system nor /session", "/session"),
        ("qemu+ssh://far.example/systemd", "names neither", "/system"),
    ],
)
def test_uris_the_driver_refuses_in_one_line(uri: str, message: str, hint: str) -> None:
    with pytest.raises(UsageError) as info:
        libvirt_uri.check(uri)
    assert message in info.value.message and "\n" not in info.value.message
    assert info.value.hint is not None and hint in info.value.hint


def test_the_jump_host_comes_from_the_uri_and_its_query() -> None:
    assert libvirt_uri.jump_host(REMOTE) == JumpHost(
        host="far.example",
        port=2222,
        user="alice",
        key_path=Path("/k/id_far"),
        known_hosts=Path("/k/far_hosts"),
    )


def test_the_jump_host_defaults_are_sshs() -> None:
    jump = libvirt_uri.jump_host("qemu+libssh://far.example/session?no_verify=1")
    assert jump == JumpHost(host="far.example")
    assert (jump.port, jump.user, jump.key_path) == (22, "", None)
    assert jump.known_hosts == Path("~/.ssh/known_hosts")
    assert jump.destination == "far.example"


def test_a_repeated_query_parameter_counts_once_the_last() -> None:
    jump = libvirt_uri.jump_host("qemu+ssh://far.example/system?keyfile=/a&keyfile=/b")
    assert jump is not None and jump.key_path == Path("/b")


def test_a_local_uri_has_no_jump_host() -> None:
    assert libvirt_uri.jump_host("qemu:///system") is None
    assert libvirt_uri.jump_host("qemu+ssh:///system") is None  # no host: this one


# --- the domain for another host ------------------------------------------------------


def _config(root: Path, **overrides: object) -> MachineConfig:
    values: dict[str, object] = dict(
        name="dev", accel=Acceleration("tcg", False, "test"), nested=False, mem_mib=1024, cpus=1,
        disk=root / "disk.qcow2", seed=root / "seed.iso", host_ip="127.77.0.2", ssh_port=10022,
        qmp_socket=root / "qmp.sock", serial_log=root / "serial.log", pidfile=root / "qemu.pid",
        boot=DirectBoot(Path("/c/vmlinuz"), Path("/c/initrd.img"), "root=/dev/vda console=ttyS0"),
    )  # fmt: skip
    values.update(overrides)
    return MachineConfig(**values)  # type: ignore[arg-type]


def _qemu_args(root: ET.Element) -> list[str]:
    return [a.get("value", "") for a in root.iter(f"{{{QEMU_NS}}}arg")]


@needs_validator
def test_a_remote_domain_has_a_pty_console_and_no_pid_file(tmp_path: Path) -> None:
    xml = domain_xml(_config(Path("/s/i/dev")), backing=Path("/pool/img"), remote=True)
    validate(xml, "domain", tmp_path)
    root = ET.fromstring(xml)
    (serial,) = root.findall("devices/serial")
    assert serial.get("type") == "pty"
    assert serial.find("source") is None
    assert serial.find("target").get("port") == "0"  # type: ignore[union-attr]
    args = _qemu_args(root)
    assert "-pidfile" not in args
    assert "user,id=ccnet0,hostfwd=tcp:127.77.0.2:10022-:22" in args  # the SSH forward stays
    assert "/s/i/dev/serial.log" not in xml and "/s/i/dev/qemu.pid" not in xml


def test_a_local_domain_keeps_its_file_console_and_pid_file() -> None:
    root = ET.fromstring(domain_xml(_config(Path("/s/i/dev"))))
    (serial,) = root.findall("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == "/s/i/dev/serial.log"  # type: ignore[union-attr]
    args = _qemu_args(root)
    assert args[args.index("-pidfile") + 1] == "/s/i/dev/qemu.pid"


# --- the driver against a remote URI --------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLibvirt:
    return install(monkeypatch)


@pytest.fixture
def store(fake: FakeLibvirt) -> FakePool:
    made = FakePool(pool_xml(target="/srv/pool"))
    fake.conn.pools["ccloudvm"] = made
    return made


def _instance(
    tmp_path: Path, connect: str = REMOTE, **overrides: object
) -> tuple[InstanceFiles, InstanceState]:
    files = InstanceFiles(tmp_path / "home" / "instances" / "dev")
    files.dir.mkdir(parents=True, exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    for name, data in (("img.qcow2", b"QFI\xfb image"), ("vmlinuz", b"kernel"),
                       ("initrd.img", b"initrd")):  # fmt: skip
        (cache / name).write_bytes(data)
    files.seed.write_bytes(b"seed iso for dev")
    values: dict[str, object] = dict(
        name="dev", workload="debian",
        image=ImageRef("debian-12", "k", str(cache / "img.qcow2"), kernel=str(cache / "vmlinuz"),
                       initrd=str(cache / "initrd.img")),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022,
        guest_user="ccloudvm", driver="libvirt", connect=connect,
    )  # fmt: skip
    values.update(overrides)
    inst = InstanceState(**values)  # type: ignore[arg-type]
    save_state(files, inst)
    return files, inst


def _machine(files: InstanceFiles, inst: InstanceState) -> MachineConfig:
    return _config(
        files.dir,
        boot=DirectBoot(Path(inst.image.kernel), Path(inst.image.initrd or ""), "console=ttyS0"),
    )


def _paths_in(root: ET.Element) -> list[str]:
    """Every file the domain names: disks, backing stores, kernel, initrd, consoles."""
    found = [e.get("file", "") for e in root.iter("source") if e.get("file")]
    found += [e.get("path", "") for e in root.iter("source") if e.get("path")]
    found += [root.findtext("os/kernel") or "", root.findtext("os/initrd") or ""]
    return found


def test_define_puts_the_files_in_the_pool_and_names_their_volumes(
    fake: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    assert driver.remote
    driver.define(_machine(files, inst))
    cache = tmp_path / "cache"
    image_vol = volume_name(cache / "img.qcow2")
    uploaded = {
        image_vol: b"QFI\xfb image",
        volume_name(cache / "vmlinuz"): b"kernel",
        volume_name(cache / "initrd.img"): b"initrd",
        volume_name(files.seed): b"seed iso for dev",
    }
    assert {name: bytes(store.volumes[name].data) for name in uploaded} == uploaded
    markers = {f"{name}.complete" for name in uploaded}  # each upload said complete
    assert set(store.volumes) == {*uploaded, *markers, "dev-disk.qcow2"}
    disk_xml = ET.fromstring(store.volumes["dev-disk.qcow2"].xml)
    assert disk_xml.findtext("backingStore/path") == f"/srv/pool/{image_vol}"
    assert disk_xml.findtext("capacity") == str(8 << 30)

    xml = (files.dir / "domain.xml").read_text()
    root = ET.fromstring(xml)
    disks = root.findall("devices/disk")
    assert disks[0].find("source").get("file") == "/srv/pool/dev-disk.qcow2"  # type: ignore[union-attr]
    assert disks[0].find("backingStore/source").get("file") == f"/srv/pool/{image_vol}"  # type: ignore[union-attr]
    assert disks[1].find("source").get("file") == (  # type: ignore[union-attr]
        f"/srv/pool/{volume_name(files.seed)}"
    )
    assert root.findtext("os/kernel") == f"/srv/pool/{volume_name(cache / 'vmlinuz')}"
    assert root.findtext("os/initrd") == f"/srv/pool/{volume_name(cache / 'initrd.img')}"
    assert all(path.startswith("/srv/pool/") for path in _paths_in(root))
    # Nothing of this host's but the mark that says whose domain it is.
    assert owner_of(xml) == str(files.dir)
    root.find("metadata").remove(root.find(f"metadata/{{{CCLOUDVM_NS}}}instance"))  # type: ignore[union-attr,arg-type]
    rest = ET.tostring(root, encoding="unicode")
    assert str(tmp_path) not in rest
    assert root.find("devices/serial").get("type") == "pty"  # type: ignore[union-attr]
    assert "-pidfile" not in _qemu_args(root)


@needs_validator
def test_the_remote_domain_is_valid_by_libvirts_schema(
    fake: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    LibvirtDriver(files, inst).define(_machine(files, inst))
    validate((files.dir / "domain.xml").read_text(), "domain", tmp_path)


def test_a_second_define_uploads_nothing_and_keeps_the_disk(
    fake: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    LibvirtDriver(files, inst).define(_machine(files, inst))
    streams = len(fake.conn.streams)
    disk = store.volumes["dev-disk.qcow2"]
    LibvirtDriver(files, inst).define(_machine(files, inst))
    assert len(fake.conn.streams) == streams == 4  # image, kernel, initrd, seed: once each
    assert store.volumes["dev-disk.qcow2"] is disk


def test_a_boot_without_initrd_uploads_the_kernel_only(
    fake: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    machine = _config(files.dir, boot=DirectBoot(Path(inst.image.kernel), None, "console=ttyS0"))
    LibvirtDriver(files, inst).define(machine)
    root = ET.fromstring((files.dir / "domain.xml").read_text())
    assert root.find("os/initrd") is None
    assert root.findtext("os/kernel", "").startswith("/srv/pool/")
    assert len(fake.conn.streams) == 3


def test_define_makes_the_pool_under_system(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    LibvirtDriver(files, inst).define(_machine(files, inst))
    made = fake.conn.pools["ccloudvm"]
    assert made.active and made.autostart
    root = ET.fromstring((files.dir / "domain.xml").read_text())
    assert root.find("devices/disk/source").get("file") == (  # type: ignore[union-attr]
        "/var/lib/libvirt/images/ccloudvm/dev-disk.qcow2"
    )


def test_define_under_session_without_a_pool_is_refused(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path, connect="qemu+ssh://alice@far.example/session")
    with pytest.raises(UsageError, match="has no storage pool 'ccloudvm'"):
        LibvirtDriver(files, inst).define(_machine(files, inst))
    assert fake.conn.streams == [] and not (files.dir / "domain.xml").exists()


def test_a_local_uri_uploads_nothing(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path, connect="qemu:///system")
    driver = LibvirtDriver(files, inst)
    assert not driver.remote
    driver.define(_machine(files, inst))
    assert fake.conn.pools_defined == [] and fake.conn.streams == []
    root = ET.fromstring((files.dir / "domain.xml").read_text())
    assert root.find("devices/disk/source").get("file") == str(files.disk)  # type: ignore[union-attr]
    assert root.find("devices/serial").get("type") == "file"  # type: ignore[union-attr]
    driver.start()
    assert ("openConsole", None, 1) not in fake.conn.domains["dev"].calls


def test_start_copies_the_remote_console_into_the_serial_log(
    fake: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    driver.define(_machine(files, inst))

    def console(stream: FakeStream) -> None:
        stream.incoming = [b"Linux version 6.1\n", b"login: "]

    fake.conn.next_stream = console
    driver.start()
    dom = fake.conn.domains["dev"]
    assert dom.calls[:2] == [("create",), ("openConsole", None, 1)]
    assert driver._console is not None
    driver._console._thread.join(5)
    assert files.serial.read_bytes() == b"Linux version 6.1\nlogin: "


def test_a_started_domain_whose_console_cannot_be_opened_is_stopped_again(
    fake: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    driver.define(_machine(files, inst))
    real_define = fake.conn.defineXML

    def define(xml: str) -> FakeDomain:
        dom = real_define(xml)
        dom.fail["openConsole"] = FakeLibvirtError("Couldn't create lock file for device")
        return dom

    fake.conn.defineXML = define  # type: ignore[method-assign]
    with pytest.raises(LaunchFailed) as info:
        driver.start()
    assert info.value.message == (
        "libvirt started 'dev' but could not open its console: Couldn't create lock file "
        "for device; it was stopped again"
    )
    dom = fake.conn.domains["dev"]
    assert ("destroy",) in dom.calls and not dom.active  # nobody could see it boot


def test_tap_console_opens_the_console_of_a_running_remote_domain_only(
    fake: FakeLibvirt, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(
        domain_xml(_machine(files, inst), owner=str(files.dir), remote=True), active=False
    )
    fake.conn.domains["dev"] = dom
    LibvirtDriver(files, inst).tap_console()
    assert not any(call[0] == "openConsole" for call in dom.calls)
    dom.active = True
    LibvirtDriver(files, inst).tap_console()
    assert ("openConsole", None, 0) in dom.calls  # not forced: a boot's copy is not taken over
    local_files, local = _instance(tmp_path, connect="qemu:///system")
    dom.calls.clear()
    LibvirtDriver(local_files, local).tap_console()
    assert not any(call[0] == "openConsole" for call in dom.calls)


def test_a_console_that_cannot_be_opened_is_one_line(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(domain_xml(_machine(files, inst), owner=str(files.dir)), active=True)
    dom.fail["openConsole"] = FakeLibvirtError("operation failed: Active console session exists")
    fake.conn.domains["dev"] = dom
    with pytest.raises(Exception, match="could not open the console of 'dev': operation failed"):
        LibvirtDriver(files, inst).tap_console()


def test_delete_removes_the_disk_and_seed_but_keeps_the_images_volumes(
    fake: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    driver.define(_machine(files, inst))
    driver.start()
    cache = tmp_path / "cache"
    kept = {volume_name(cache / n) for n in ("img.qcow2", "vmlinuz", "initrd.img")}
    LibvirtDriver(files, inst).delete()
    assert set(store.volumes) == kept | {f"{name}.complete" for name in kept}
    assert fake.conn.domains["dev"].calls[-1][0] == "undefineFlags"


def test_delete_removes_the_volumes_of_a_domain_never_defined(
    fake: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    """A create that failed after define (the volumes made) but before libvirt took the
    domain: its undo must not leave a disk the next instance of that name would boot."""
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    driver.define(_machine(files, inst))
    fake.conn.define_error = FakeLibvirtError("unsupported configuration: no KVM")
    with pytest.raises(Exception, match="libvirt failed to start 'dev'"):
        driver.start()
    assert "dev" not in fake.conn.domains
    LibvirtDriver(files, inst).delete()
    assert "dev-disk.qcow2" not in store.volumes
    assert volume_name(files.seed) not in store.volumes


@pytest.mark.parametrize("path", ["system", "session"])
def test_delete_with_no_pool_there_makes_none(fake: FakeLibvirt, tmp_path: Path, path: str) -> None:
    files, inst = _instance(tmp_path, connect=f"qemu+ssh://alice@far.example/{path}")
    dom = FakeDomain(domain_xml(_machine(files, inst), owner=str(files.dir)), active=True)
    fake.conn.domains["dev"] = dom
    LibvirtDriver(files, inst).delete()  # no error: nothing of ours can be there
    assert dom.calls[-1][0] == "undefineFlags"
    assert fake.conn.pools == {} and fake.conn.pools_defined == []


def test_delete_of_a_local_domain_touches_no_pool(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path, connect="qemu:///system")
    fake.conn.domains["dev"] = FakeDomain(domain_xml(_machine(files, inst), owner=str(files.dir)))
    LibvirtDriver(files, inst).delete()
    assert fake.conn.pools == {} and fake.conn.pools_defined == []


# --- requests a VM on another host cannot take ----------------------------------------


def test_mounts_drives_and_ports_are_refused_for_another_host(tmp_path: Path) -> None:
    mount = MountSpec(tmp_path / "src", "/src", "m0")
    drive = DriveSpec.parse(f"{tmp_path / 'data.img'},format=raw")
    port = PortSpec(18080, 80)
    check = libvirt_driver.check_remote_request
    with pytest.raises(UsageError) as info:
        check(REMOTE, [mount], [drive], [port])
    assert (
        info.value.message
        == f"a VM on far.example cannot mount this host's folder {tmp_path / 'src'}"
    )
    assert info.value.hint is not None and "ccloudvm copy" in info.value.hint
    with pytest.raises(UsageError) as info:
        check(REMOTE, [], [drive], [port])
    assert info.value.message == (
        f"a VM on far.example cannot use this host's file {tmp_path / 'data.img'} as a drive"
    )
    with pytest.raises(UsageError) as info:
        check(REMOTE, [], [], [port])
    assert (
        info.value.message == "--port 127.0.0.1:18080 -> 80 would listen on far.example, not here"
    )
    assert info.value.hint is not None and "ssh -L" in info.value.hint
    check(REMOTE, [], [], [])  # nothing of this host's asked for: fine
    check("qemu:///system", [mount], [drive], [port])  # a local URI takes them all


# --- drivers: where the machine runs --------------------------------------------------


def test_is_remote_only_for_libvirt_on_another_host(tmp_path: Path) -> None:
    _, remote = _instance(tmp_path)
    _, local = _instance(tmp_path, connect="qemu:///session")
    _, qemu = _instance(tmp_path, driver="qemu", connect="")
    assert drivers.is_remote(remote)
    assert not drivers.is_remote(local) and not drivers.is_remote(qemu)


def test_machine_running_asks_the_remote_libvirt(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(domain_xml(_machine(files, inst), owner=str(files.dir)), active=True)
    fake.conn.domains["dev"] = dom
    assert drivers.machine_running(files, inst)
    dom.active = False
    assert not drivers.machine_running(files, inst)
    assert fake.opened == [REMOTE, REMOTE]


def test_machine_running_of_a_local_instance_reads_its_pid_file(
    fake: FakeLibvirt, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path, connect="qemu:///session")
    fake.conn.domains["dev"] = FakeDomain(
        domain_xml(_machine(files, inst), owner=str(files.dir)), active=True
    )
    assert not drivers.machine_running(files, inst)  # no QEMU of ours here
    files.pidfile.write_text("999999999\n")
    assert not drivers.machine_running(files, inst)
    assert fake.opened == []  # libvirt not asked


def test_suspend_and_snapshots_need_the_qemu_driver(tmp_path: Path) -> None:
    _, inst = _instance(tmp_path, connect="qemu:///session")
    with pytest.raises(UsageError) as info:
        drivers.require_qemu(inst, "suspend")
    assert info.value.message == "suspend of 'dev' needs the QEMU driver; it runs under libvirt"
    assert info.value.hint is not None and "--driver qemu" in info.value.hint
    _, qemu = _instance(tmp_path, driver="qemu", connect="")
    drivers.require_qemu(qemu, "suspend")  # no error


KVM_CAPS = (
    "<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/>"
    "<domain type='kvm'/></arch></guest></capabilities>"
)


def test_a_remote_instance_gets_the_acceleration_its_host_offers(
    fake: FakeLibvirt, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    tcg = driver.acceleration("auto")
    assert (tcg.accel, tcg.reason) == ("tcg", "far.example's libvirt offers no KVM")
    fake.conn.capabilities = KVM_CAPS
    kvm = driver.acceleration("auto")
    assert (kvm.accel, kvm.nested, kvm.reason) == ("kvm", False, "far.example's libvirt offers KVM")
    assert driver.acceleration("tcg").accel == "tcg"  # --accel wins
    fake.conn.capabilities = "not xml"
    assert driver.acceleration("auto").accel == "tcg"
