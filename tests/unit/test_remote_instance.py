"""How the commands treat an instance whose machine runs on another host (libvirt over
SSH): status asks libvirt there and says "unreachable" when it does not answer (and
`instances` still lists it); connect and ssh-config go through that host (what ssh -G
makes of them); --disk, save, suspend and snapshots are refused in one line, before
anything is touched. libvirt is the fake of tests/unit/fake_libvirt.py."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ccloudvm.app import builds
from ccloudvm.cli.main import main
from ccloudvm.core.errors import StateError, UsageError
from ccloudvm.instance import access, snapshots, suspend
from ccloudvm.instance import lifecycle as instance
from ccloudvm.instance.status import status
from ccloudvm.state.instance_state import (
    ImageRef,
    InstanceFiles,
    InstanceState,
    load_state,
    save_state,
)
from ccloudvm.state.paths import StateDir
from ccloudvm.vm.libvirt_xml import CCLOUDVM_NS
from tests.unit.fake_libvirt import FakeDomain, FakeLibvirt, FakeLibvirtError, FakeStream, install
from tests.unit.test_ssh_argv import _resolved

REMOTE = "qemu+ssh://alice@far.example:2222/system?keyfile=/k/id_far&known_hosts=/k/far_hosts"
SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None, reason="the ssh client is not installed")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLibvirt:
    return install(monkeypatch)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    home = StateDir(tmp_path / "home")
    monkeypatch.setenv("CCLOUDVM_HOME", str(home.root))
    return home


def _instance(
    state: StateDir, name: str = "dev", connect: str = REMOTE, **overrides: object
) -> tuple[InstanceFiles, InstanceState]:
    files = InstanceFiles(state.instance_dir(name))
    files.dir.mkdir(parents=True)
    values: dict[str, object] = dict(
        name=name, workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10023,
        guest_user="ccloudvm", driver="libvirt", connect=connect, desired="running",
    )  # fmt: skip
    values.update(overrides)
    inst = InstanceState(**values)  # type: ignore[arg-type]
    save_state(files, inst)
    files.known_hosts.write_text("[127.77.0.2]:10023 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\n")
    return files, inst


def _domain(fake: FakeLibvirt, files: InstanceFiles, *, active: bool, state: int) -> FakeDomain:
    xml = (
        f"<domain><name>{files.dir.name}</name><metadata><ccloudvm:instance "
        f"xmlns:ccloudvm='{CCLOUDVM_NS}' dir='{files.dir}'/></metadata></domain>"
    )
    dom = FakeDomain(xml, active=active, state=state)
    fake.conn.domains[files.dir.name] = dom
    return dom


# --- status and instances -------------------------------------------------------------


def test_status_of_a_remote_instance_is_what_libvirt_there_says(
    fake: FakeLibvirt, state: StateDir
) -> None:
    files, _ = _instance(state)
    dom = _domain(fake, files, active=True, state=1)
    assert status(state, "dev").state == "running"
    dom.state_code, dom.active = 5, False
    assert status(state, "dev").state == "stopped"  # not "crashed": libvirt knows
    assert fake.opened == [REMOTE, REMOTE]


def test_a_remote_instance_whose_host_does_not_answer_is_unreachable(
    fake: FakeLibvirt, state: StateDir
) -> None:
    _instance(state)
    fake.open_error = FakeLibvirtError(
        "Cannot recv data: ssh: connect to host far.example port 2222: No route to host"
    )
    shown = status(state, "dev")
    assert shown.state == "unreachable"
    assert shown.driver == f"libvirt {REMOTE}"
    assert shown.ssh == "ccloudvm@127.77.0.2:10023"


def test_a_foreign_domain_there_is_unreachable_too_not_a_crash(
    fake: FakeLibvirt, state: StateDir
) -> None:
    _instance(state)
    fake.conn.domains["dev"] = FakeDomain("<domain><name>dev</name></domain>", active=True)
    assert status(state, "dev").state == "unreachable"


def _instances(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    try:
        main(["instances", *flags])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


def test_instances_lists_an_unreachable_remote_instance_with_the_others(
    fake: FakeLibvirt,
    state: StateDir,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _instance(state, "far")
    _instance(state, "near", connect="", driver="qemu", host_ip="127.77.0.3", desired="stopped")
    fake.open_error = FakeLibvirtError("Cannot recv data: Connection refused")
    monkeypatch.setenv("COLUMNS", "200")
    code, out = _instances(capsys)
    assert code == 0, out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["far"][1] == "unreachable" and rows["far"][-1] == "libvirt@far.example"
    assert rows["near"][1] == "stopped"
    code, out = _instances(capsys, "--json")
    assert code == 0
    listed = {row["name"]: row["state"] for row in json.loads(out)}
    assert listed == {"far": "unreachable", "near": "stopped"}


# --- connect and ssh-config -----------------------------------------------------------


def _assert_the_jump_host(config: dict[str, list[str]]) -> None:
    assert (config["hostname"], config["port"], config["user"]) == (
        ["far.example"], ["2222"], ["alice"]
    )  # fmt: skip
    assert config["identityfile"] == ["/k/id_far"]
    assert config["identitiesonly"] == ["yes"]
    assert config["userknownhostsfile"] == ["/k/far_hosts"]
    assert config["stricthostkeychecking"] == ["true"]


@needs_ssh
def test_connect_to_a_remote_instance_jumps_through_its_host(
    fake: FakeLibvirt, state: StateDir
) -> None:
    files, _ = _instance(state)
    state.private_key.write_text("a key\n")  # ssh -G leaves out identity files that are missing
    _domain(fake, files, active=True, state=1)
    argv = access.ssh_argv(state, "dev", ["uname"])
    assert argv[1:5] == ["-T", "-J", "ccloudvm-jump", "-F"]
    assert argv[5] == str(files.dir / "jump.ssh_config")
    assert argv[-3:] == ["ccloudvm@127.77.0.2", "--", "uname"]
    guest = _resolved(argv)
    assert guest["proxyjump"] == ["ccloudvm-jump"]
    assert (guest["hostname"], guest["port"]) == (["127.77.0.2"], ["10023"])
    assert guest["userknownhostsfile"] == [str(files.known_hosts)]
    assert guest["stricthostkeychecking"] == ["true"]
    assert guest["identityfile"] == [str(state.private_key)]
    # ssh hands -F to the jump's own ssh, which finds the host there under that alias
    assert SSH is not None
    _assert_the_jump_host(_resolved([SSH, "-F", argv[5], "ccloudvm-jump"]))


def test_a_local_libvirt_instance_is_found_by_its_pid_file_not_by_libvirt(
    fake: FakeLibvirt, state: StateDir
) -> None:
    files, _ = _instance(state, connect="qemu:///session")
    _domain(fake, files, active=True, state=1)
    with pytest.raises(StateError, match="'dev' is not running"):  # no QEMU pid file here
        access.ssh_argv(state, "dev")
    assert fake.opened == []


def test_connect_to_a_stopped_remote_instance_says_how_to_start_it(
    fake: FakeLibvirt, state: StateDir
) -> None:
    files, _ = _instance(state)
    _domain(fake, files, active=False, state=5)
    with pytest.raises(StateError) as info:
        access.ssh_argv(state, "dev")
    assert info.value.message == "'dev' is not running"
    assert info.value.hint == "start it with 'ccloudvm start dev'"
    assert not (files.dir / "jump.ssh_config").exists()
    with pytest.raises(StateError, match="'dev' is not running"):
        access.connect_target(state, "dev")


@needs_ssh
def test_ssh_config_of_a_remote_instance_has_its_jump_host_stanza(
    state: StateDir, tmp_path: Path
) -> None:
    files, _ = _instance(state)
    state.private_key.write_text("a key\n")
    stanza = access.ssh_config(state, "dev")  # no libvirt asked: it need not run
    assert "  ProxyJump dev-ccloudvm-jump\n" in stanza
    assert "\nHost dev-ccloudvm-jump\n" in stanza
    config_file = tmp_path / "ssh_config"
    config_file.write_text(stanza)
    assert SSH is not None
    guest = _resolved([SSH, "-F", str(config_file), "dev"])
    assert guest["proxyjump"] == ["dev-ccloudvm-jump"]
    assert (guest["hostname"], guest["port"]) == (["127.77.0.2"], ["10023"])
    assert guest["userknownhostsfile"] == [str(files.known_hosts)]
    _assert_the_jump_host(_resolved([SSH, "-F", str(config_file), "dev-ccloudvm-jump"]))


def test_ssh_config_of_a_local_instance_has_no_jump(state: StateDir) -> None:
    _instance(state, connect="qemu:///system")
    stanza = access.ssh_config(state, "dev")
    assert "ProxyJump" not in stanza and stanza.count("Host ") == 1


# --- what cannot be done from here ----------------------------------------------------


def test_resize_refuses_to_grow_a_remote_disk(fake: FakeLibvirt, state: StateDir) -> None:
    files, inst = _instance(state, desired="stopped")
    with pytest.raises(UsageError) as info:
        instance._resize(files, inst, instance.Resize(mem_mib=2048, disk_gib=20))
    assert info.value.message == (
        "dev's disk is a volume on another host; --disk cannot grow it from here"
    )
    assert info.value.hint is not None and "virsh vol-resize" in info.value.hint
    saved = load_state(state, "dev")
    assert (saved.mem_mib, saved.disk_gib) == (1024, 8)  # nothing changed


def test_resize_of_a_remote_instance_without_disk_changes_its_sizes(
    fake: FakeLibvirt, state: StateDir
) -> None:
    files, inst = _instance(state, desired="stopped")
    subprocess.run(  # noqa: S603,S607 - fixed argv; the local overlay create leaves
        ["qemu-img", "create", "-q", "-f", "qcow2", str(files.disk), "8G"], check=True
    )
    instance._resize(files, inst, instance.Resize(mem_mib=2048, cpus=2))
    saved = load_state(state, "dev")
    assert (saved.mem_mib, saved.cpus, saved.disk_gib) == (2048, 2, 8)


def test_save_refuses_a_remote_instance_before_asking_its_host(
    fake: FakeLibvirt, state: StateDir
) -> None:
    _instance(state, desired="stopped")
    with pytest.raises(UsageError) as info:
        builds.save_instance(state, "dev", "mine")
    assert info.value.message == "'dev' runs on another host: its disk is there, not here to save"
    assert fake.opened == []


def test_suspend_is_refused_under_libvirt(fake: FakeLibvirt, state: StateDir) -> None:
    _instance(state, connect="qemu:///session")
    with pytest.raises(UsageError) as info:
        suspend.suspend(state, "dev")
    assert info.value.message == "suspend of 'dev' needs the QEMU driver; it runs under libvirt"
    assert fake.opened == []


@pytest.mark.parametrize("uri", ["qemu:///session", REMOTE])
def test_snapshots_are_refused_under_libvirt(fake: FakeLibvirt, state: StateDir, uri: str) -> None:
    files, _ = _instance(state, connect=uri)
    for action in (snapshots.save, snapshots.restore):
        with pytest.raises(UsageError) as info:
            action(state, "dev", "before")
        assert info.value.message == (
            "a snapshot of 'dev' needs the QEMU driver; it runs under libvirt"
        )
    assert not files.snapshots.exists()
    assert fake.opened == []


# --- logs --follow --------------------------------------------------------------------


class _Boots(FakeDomain):
    """A domain that runs while the first `polls` questions are asked, then stops."""

    def __init__(self, xml: str, polls: int) -> None:
        super().__init__(xml, active=True, state=1)
        self.polls = polls

    def isActive(self) -> int:  # noqa: N802 - libvirt's name
        self.polls -= 1
        self.active = self.polls >= 0
        return super().isActive()


def test_logs_follow_copies_the_remote_console_until_the_domain_stops(
    fake: FakeLibvirt, state: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    files, _ = _instance(state)
    files.serial.write_text("earlier boot\n")
    dom = _domain(fake, files, active=True, state=1)
    boots = _Boots(dom.xml, polls=4)
    fake.conn.domains["dev"] = boots

    def console(stream: FakeStream) -> None:
        stream.incoming = [b"Linux version 6.1\n", b"dev login: \n"]

    fake.conn.next_stream = console
    try:
        main(["logs", "dev", "--follow"])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    assert out == "earlier boot\nLinux version 6.1\ndev login: \n"
    assert ("openConsole", None, 0) in boots.calls  # logs -f does not force it
    assert fake.opened == [REMOTE]  # one connection for the whole follow, not one a poll


# --- booting ---------------------------------------------------------------------------


def test_ssh_to_a_remote_instance_is_through_the_uris_host(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccloudvm.instance import boot
    from ccloudvm.remote.jump import JumpHost

    files, inst = _instance(state)
    files.host_key_pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake host\n")
    given: list[dict[str, object]] = []
    monkeypatch.setattr(boot, "wait_for_ssh", lambda **kwargs: given.append(kwargs))
    boot.ssh_target_for(state, inst, deadline=0)
    _, local = _instance(state, "near", connect="", driver="qemu")
    InstanceFiles(state.instance_dir("near")).host_key_pub.write_text("ssh-ed25519 AAAA x\n")
    boot.ssh_target_for(state, local, deadline=0)
    assert given[0]["jump"] == JumpHost(
        "far.example", 2222, "alice", Path("/k/id_far"), Path("/k/far_hosts")
    )
    assert (given[0]["host"], given[0]["port"]) == ("127.77.0.2", 10023)  # its loopback there
    assert given[1]["jump"] is None


def test_a_remote_launch_keeps_its_port_when_this_hosts_is_taken(
    fake: FakeLibvirt, state: StateDir
) -> None:
    """The forward listens on that host: a local listener on the port is no reason to
    move it (and re-pin the host key)."""
    from ccloudvm.instance import boot
    from ccloudvm.vm.accel import Acceleration
    from tests.unit.fake_libvirt import FakePool, pool_xml

    fake.conn.pools["ccloudvm"] = FakePool(pool_xml())
    files, inst = _instance(state, host_ip="127.0.0.1")
    for name, data in (("disk.qcow2", b"image"), ("seed.iso", b"seed")):
        (files.dir / name).write_bytes(data)
    inst.image = ImageRef("debian-12", "k", str(files.disk))
    pinned = files.known_hosts.read_text()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = inst.ssh_port = busy.getsockname()[1]
        boot.launch(state, files, inst, Acceleration("tcg", False, "test"))
    assert load_state(state, "dev").ssh_port == inst.ssh_port == taken
    assert files.known_hosts.read_text() == pinned
    assert fake.conn.domains["dev"].active
    assert f"hostfwd=tcp:127.0.0.1:{inst.ssh_port}-:22" in fake.conn.defined[-1]
