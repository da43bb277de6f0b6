"""The libvirt driver against a fake libvirt module: the calls it makes on the connection
and the domain, the state it reports, and the one line a user reads when libvirt says no.
The fake (tests/unit/fake_libvirt.py) stands for libvirt-python and its daemon (the
outside world), nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.state.instance_state import ImageRef, InstanceFiles, InstanceState
from ccloudvm.vm import libvirt_driver
from ccloudvm.vm.accel import Acceleration
from ccloudvm.vm.libvirt_driver import LibvirtDriver
from ccloudvm.vm.libvirt_xml import owner_of
from ccloudvm.vm.machine import LaunchFailed
from ccloudvm.vm.qemu import DirectBoot, MachineConfig
from tests.unit.fake_libvirt import FakeDomain, FakeLibvirt, FakeLibvirtError, install


def _owned_xml(folder: Path | str) -> str:
    return (
        "<domain type='kvm'><name>dev</name><metadata>"
        f"<ccloudvm:instance xmlns:ccloudvm='{libvirt_driver_ns()}' dir='{folder}'/>"
        "</metadata></domain>"
    )


def libvirt_driver_ns() -> str:
    from ccloudvm.vm.libvirt_xml import CCLOUDVM_NS

    return CCLOUDVM_NS


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLibvirt:
    return install(monkeypatch)


def _instance(tmp_path: Path, connect: str = "") -> tuple[InstanceFiles, InstanceState]:
    files = InstanceFiles(tmp_path / "dev")
    files.dir.mkdir()
    inst = InstanceState(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", str(tmp_path / "img.qcow2")),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022, guest_user="u",
        driver="libvirt", connect=connect,
    )  # fmt: skip
    return files, inst


def _machine(files: InstanceFiles) -> MachineConfig:
    return MachineConfig(
        name="dev", accel=Acceleration("tcg", False, "test"), nested=False, mem_mib=1024, cpus=1,
        disk=files.disk, seed=files.seed, host_ip="127.77.0.2", ssh_port=10022, qmp_socket=files.qmp,
        serial_log=files.serial, pidfile=files.pidfile,
        boot=DirectBoot(Path("/c/vmlinuz"), Path("/c/initrd.img"), "root=/dev/vda console=ttyS0"),
    )  # fmt: skip


# --- connecting -----------------------------------------------------------------------


def test_without_libvirt_python_the_error_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import libvirt -> ImportError
    with pytest.raises(CcloudvmError) as info:
        libvirt_driver.connect("qemu:///session")
    assert "needs libvirt-python, which is not installed" in info.value.message
    assert info.value.hint is not None and "--driver qemu" in info.value.hint
    assert "make libvirt" in info.value.hint


def test_connect_silences_libvirts_own_stderr_and_opens_the_uri(fake: FakeLibvirt) -> None:
    conn = libvirt_driver.connect("qemu:///system")
    assert conn is fake.conn
    assert fake.opened == ["qemu:///system"]
    assert len(fake.handlers) == 1 and fake.handlers[0](None, None) is None


def test_a_uri_that_does_not_answer_says_so_in_one_line(fake: FakeLibvirt) -> None:
    fake.open_error = FakeLibvirtError("Failed to connect socket\nto '/run/libvirt': refused")
    with pytest.raises(CcloudvmError) as info:
        libvirt_driver.connect("qemu:///session")
    assert info.value.message == (
        "libvirt at qemu:///session does not answer: Failed to connect socket"
    )
    assert info.value.hint is not None and "libvirtd or virtqemud" in info.value.hint


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("qemu+tcp://h/system", "needs an SSH transport, not 'tcp'"),
        ("qemu://h/system", "needs an SSH transport, not 'tls'"),  # libvirt's default
        ("lxc:///", "is not a QEMU URI"),
        ("qemu+ssh://u@h/", "names neither /system nor /session"),
    ],
)
def test_a_uri_the_driver_cannot_use_is_refused_before_connecting(
    fake: FakeLibvirt, uri: str, says: str
) -> None:
    with pytest.raises(UsageError, match=says):
        libvirt_driver.connect(uri)
    assert fake.opened == []


def test_a_remote_ssh_uri_is_opened(fake: FakeLibvirt) -> None:
    assert libvirt_driver.connect("qemu+ssh://u@h/system") is fake.conn
    assert fake.opened == ["qemu+ssh://u@h/system"]


def test_a_uri_of_another_hypervisor_is_refused(fake: FakeLibvirt) -> None:
    fake.conn.kind = "LXC"
    with pytest.raises(UsageError, match="is libvirt's LXC driver, not QEMU"):
        libvirt_driver.connect("qemu:///system")


def test_an_error_without_a_message_is_shown_by_its_repr() -> None:
    class Silent(Exception):
        def get_error_message(self) -> str:
            return ""

    assert libvirt_driver._message(Silent()) == "Silent()"
    assert libvirt_driver._message(ValueError("first\nsecond")) == "first"


# --- check_create ---------------------------------------------------------------------


def test_check_create_passes_with_no_domain_and_closes(fake: FakeLibvirt, tmp_path: Path) -> None:
    libvirt_driver.check_create("qemu:///session", "dev", tmp_path / "dev")
    assert fake.conn.closed


def test_check_create_accepts_our_own_leftover_domain(fake: FakeLibvirt, tmp_path: Path) -> None:
    fake.conn.domains["dev"] = FakeDomain(_owned_xml(tmp_path / "dev"))
    libvirt_driver.check_create("qemu:///session", "dev", tmp_path / "dev")
    assert fake.conn.closed


def test_check_create_refuses_someone_elses_domain(fake: FakeLibvirt, tmp_path: Path) -> None:
    fake.conn.domains["dev"] = FakeDomain("<domain><name>dev</name></domain>")
    with pytest.raises(UsageError) as info:
        libvirt_driver.check_create("qemu:///session", "dev", tmp_path / "dev")
    assert "already has a domain named 'dev' that ccloudvm did not make" in info.value.message
    assert info.value.hint is not None and "--name" in info.value.hint
    assert fake.conn.closed


def test_a_lookup_failure_other_than_no_domain_is_reported(
    fake: FakeLibvirt, tmp_path: Path
) -> None:
    fake.conn.lookup_error = FakeLibvirtError("permission denied")
    with pytest.raises(CcloudvmError, match="libvirt could not look up 'dev': permission denied"):
        libvirt_driver.check_create("qemu:///session", "dev", tmp_path / "dev")


# --- the driver -----------------------------------------------------------------------


def test_define_then_start_defines_the_written_xml_and_creates(
    fake: FakeLibvirt, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    assert driver.uri == "qemu:///session"
    driver.define(_machine(files))
    written = (files.dir / "domain.xml").read_text()
    assert owner_of(written) == str(files.dir)
    assert str(tmp_path / "img.qcow2") in written  # the image is the backing file
    driver.start()
    assert fake.conn.defined == [written]
    assert fake.conn.domains["dev"].calls == [("create",)]
    assert driver.is_running()
    assert driver.status() == "stopped"  # what the domain's state code says (5)


def test_a_redefine_keeps_the_domains_uuid(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path, connect="qemu:///system")
    fake.conn.domains["dev"] = FakeDomain(_owned_xml(files.dir))
    driver = LibvirtDriver(files, inst)
    driver.define(_machine(files))
    assert fake.opened == ["qemu:///system"]
    assert "6b1c7c5e-0f5d-4a8e-9f43-3f1f1c2b9a10" in (files.dir / "domain.xml").read_text()


def test_define_refuses_a_warm_boot_snapshot(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    with pytest.raises(LaunchFailed, match="does not start from warm-boot snapshots"):
        LibvirtDriver(files, inst).define(_machine(files), restore=object())  # type: ignore[arg-type]


def test_a_failed_start_names_the_domain_file(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    driver.define(_machine(files))
    fake.conn.define_error = FakeLibvirtError("unsupported configuration: no KVM")
    with pytest.raises(LaunchFailed) as info:
        driver.start()
    assert info.value.message == (
        "libvirt failed to start 'dev': unsupported configuration: no KVM"
    )
    assert info.value.hint == f"the domain it was given is {files.dir / 'domain.xml'}"


def test_a_foreign_domain_of_the_same_name_is_never_touched(
    fake: FakeLibvirt, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(_owned_xml("/somewhere/else"), active=True)
    fake.conn.domains["dev"] = dom
    driver = LibvirtDriver(files, inst)
    for action in (driver.is_running, driver.status, driver.quit, driver.delete):
        with pytest.raises(UsageError, match="that ccloudvm did not make"):
            action()
    assert dom.calls == []


@pytest.mark.parametrize(
    ("code", "shown"),
    [(0, "unknown"), (1, "running"), (2, "running"), (3, "paused"), (4, "shutting down"),
     (6, "crashed"), (7, "suspended"), (99, "unknown")],
)  # fmt: skip
def test_status_names_libvirts_states(
    fake: FakeLibvirt, tmp_path: Path, code: int, shown: str
) -> None:
    files, inst = _instance(tmp_path)
    fake.conn.domains["dev"] = FakeDomain(_owned_xml(files.dir), state=code)
    assert LibvirtDriver(files, inst).status() == shown


def test_with_no_domain_it_is_stopped_and_the_commands_do_nothing(
    fake: FakeLibvirt, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    assert driver.status() == "stopped"
    assert not driver.is_running()
    driver.stop(5)
    driver.quit()
    driver.delete()
    assert fake.opened == ["qemu:///session"]  # one connection, kept


def test_a_failing_query_is_one_line(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(_owned_xml(files.dir))
    dom.fail["state"] = FakeLibvirtError("cannot read state\nmore detail")
    fake.conn.domains["dev"] = dom
    with pytest.raises(CcloudvmError) as info:
        LibvirtDriver(files, inst).status()
    assert info.value.message == "libvirt could not ask about 'dev': cannot read state"


def test_stop_shuts_down_politely_and_waits(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(_owned_xml(files.dir), active=True)
    fake.conn.domains["dev"] = dom
    LibvirtDriver(files, inst).stop(5)
    assert ("shutdown",) in dom.calls and ("destroy",) not in dom.calls
    assert not dom.active


def test_stop_of_a_stopped_domain_sends_nothing(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(_owned_xml(files.dir), active=False)
    fake.conn.domains["dev"] = dom
    LibvirtDriver(files, inst).stop(5)
    assert dom.calls == [("isActive",)]


def test_stop_destroys_a_guest_that_ignores_the_shutdown(
    fake: FakeLibvirt, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(_owned_xml(files.dir), active=True)
    dom.stays_on = True
    fake.conn.domains["dev"] = dom
    LibvirtDriver(files, inst).stop(0.3)
    assert "warning: dev did not power off within 0 s; destroying it" in capsys.readouterr().err
    assert dom.calls[-1] == ("destroy",)
    assert not dom.active


def test_a_refused_shutdown_is_reported(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(_owned_xml(files.dir), active=True)
    dom.fail["shutdown"] = FakeLibvirtError("Requested operation is not valid")
    fake.conn.domains["dev"] = dom
    with pytest.raises(CcloudvmError, match="could not shut down 'dev': Requested operation"):
        LibvirtDriver(files, inst).stop(5)


def test_quit_destroys_only_a_running_domain(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(_owned_xml(files.dir), active=False)
    fake.conn.domains["dev"] = dom
    driver = LibvirtDriver(files, inst)
    driver.quit()
    assert ("destroy",) not in dom.calls
    dom.active = True
    driver.quit()
    assert dom.calls[-1] == ("destroy",) and not dom.active


def test_delete_destroys_and_undefines_with_its_saved_state_and_snapshots(
    fake: FakeLibvirt, tmp_path: Path
) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(_owned_xml(files.dir), active=True)
    fake.conn.domains["dev"] = dom
    LibvirtDriver(files, inst).delete()
    assert dom.calls == [("isActive",), ("destroy",), ("undefineFlags", 1 | 2 | 32)]


def test_a_failed_undefine_is_reported(fake: FakeLibvirt, tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    dom = FakeDomain(_owned_xml(files.dir))
    dom.fail["undefineFlags"] = FakeLibvirtError("domain has snapshots")
    fake.conn.domains["dev"] = dom
    with pytest.raises(CcloudvmError, match="libvirt could not undefine 'dev': domain has"):
        LibvirtDriver(files, inst).delete()


def test_the_console_and_ssh_endpoint_come_from_the_instance(tmp_path: Path) -> None:
    files, inst = _instance(tmp_path)
    driver = LibvirtDriver(files, inst)
    assert driver.console_log == files.serial
    assert driver.ssh_endpoint() == ("127.77.0.2", 10022)


# --- what setup reports ---------------------------------------------------------------


def test_libvirt_problem_names_a_missing_python_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert libvirt_driver.libvirt_problem() == (
        "libvirt-python is not installed in ccloudvm's Python"
    )


def test_libvirt_problem_names_a_missing_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(libvirt_driver, "find_program", lambda name: None)
    assert libvirt_driver.libvirt_problem() == (
        "no libvirt daemon (libvirtd or virtqemud) is installed"
    )


def test_libvirt_problem_is_none_with_binding_and_daemon(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util

    daemon = tmp_path / "bin" / "virtqemud"
    daemon.parent.mkdir()
    daemon.write_text("#!/bin/sh\n")
    daemon.chmod(0o755)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(
        libvirt_driver, "find_program", lambda name: str(daemon) if name == "virtqemud" else None
    )
    assert libvirt_driver.libvirt_problem() is None


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("Failed to connect socket to '/run/libvirt/libvirt-sock': Permission denied", 38),
        ("authentication unavailable: no polkit agent available", 45),
        ("Cannot recv data: root@bigbox: Permission denied (publickey).", 38),
        ("libssh transport error: failed to authenticate: Access denied for 'publickey'.", 38),
    ],
)
def test_a_uri_that_refuses_us_is_said_as_such(fake: FakeLibvirt, message: str, code: int) -> None:
    fake.open_error = FakeLibvirtError(message, code)
    with pytest.raises(CcloudvmError) as info:
        libvirt_driver.connect("qemu:///system")
    assert info.value.message == f"libvirt at qemu:///system refused us: {message}"
    assert info.value.hint is not None and "libvirt group" in info.value.hint
