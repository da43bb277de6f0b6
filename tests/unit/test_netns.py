"""Bare-metal plumbing without touching the host: names, addresses, checks made up front."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from ccloudvm.cluster.baremetal import (
    BareMetalCluster,
    HostRunner,
    NamespaceTarget,
    host_addresses,
    netns_name,
    run_baremetal,
    veth_plan,
)
from ccloudvm.cluster.journal import undo_argv
from ccloudvm.cluster.network import ClusterNetwork
from ccloudvm.core.errors import CcloudvmError, StateError, ToolMissingError, UsageError
from ccloudvm.remote.target import OutputSink
from ccloudvm.state.paths import StateDir

ADDRS = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever
9: ciaovlan@ciao_br    inet 198.51.100.1/24 scope global ciaovlan\\       valid_lft forever
"""


class FakeRunner(HostRunner):
    def __init__(self, addrs: str = "") -> None:
        super().__init__(as_root=True)
        self.addrs = addrs
        self.calls: list[list[str]] = []
        self.missing = False  # `ip link show` finds nothing

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        if list(argv[:3]) == ["ip", "-o", "-4"]:
            return 0, self.addrs
        if self.missing and list(argv[:3]) == ["ip", "link", "show"]:
            return 1, "does not exist"
        return 0, ""


class RecordingTarget:
    name = "inner"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bool]] = []

    def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        output: OutputSink | None = None,
        sudo: bool = False,
        timeout: float | None = None,
    ) -> int:
        self.calls.append((argv, sudo))
        return 0


def test_names_and_an_unaddressed_pair() -> None:
    assert netns_name("cluster-test") == "ccloudvm-cluster-test"
    with pytest.raises(UsageError):
        netns_name("../etc")
    a, b = veth_plan("cluster-test"), veth_plan("other")
    assert a == veth_plan("cluster-test")  # stable across runs
    assert len(a.host) <= 15 and a.host != b.host
    assert not hasattr(a, "host_address")  # no address, so no route on the host


def test_up_gives_the_host_end_no_address(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.missing = True
    cluster = BareMetalCluster("c1", StateDir(tmp_path), runner)
    cluster.up(isolate=True)
    calls = [" ".join(call) for call in runner.calls]
    assert not [call for call in calls if " addr " in call or "169.254" in call]
    assert f"ip link set {cluster.veth.host} addrgenmode none" in calls
    assert calls.index(f"ip link set {cluster.veth.host} addrgenmode none") < calls.index(
        f"ip link set {cluster.veth.host} up"
    )


def test_host_runner_uses_passwordless_sudo_when_not_root() -> None:
    assert HostRunner(as_root=True).argv(["ip", "link"]) == ["ip", "link"]
    assert HostRunner(as_root=False).argv(["ip", "link"]) == ["sudo", "-n", "--", "ip", "link"]


def test_namespace_target_enters_the_namespace_as_root() -> None:
    inner = RecordingTarget()
    target = NamespaceTarget("ccloudvm-x", inner)  # type: ignore[arg-type]
    assert target.run(["bash", "-c", "true"]) == 0
    argv, sudo = inner.calls[0]
    assert argv == ["nsenter", "--net=/run/netns/ccloudvm-x", "--", "bash", "-c", "true"]
    assert sudo is True


def test_host_addresses_parsing() -> None:
    found = host_addresses(FakeRunner(ADDRS))
    assert ("eth0", ipaddress.IPv4Interface("192.0.2.2/24")) in found
    assert ("ciaovlan", ipaddress.IPv4Interface("198.51.100.1/24")) in found


def test_subnet_in_use_on_the_host_is_refused(tmp_path: Path) -> None:
    cluster = BareMetalCluster("c1", StateDir(tmp_path), FakeRunner(ADDRS))
    with pytest.raises(UsageError) as info:
        cluster.preflight(ClusterNetwork.from_mapping(), isolate=True)
    assert "198.51.100.0/24 is already used on this host (198.51.100.1/24 on ciaovlan)" in str(
        info.value
    )
    # Another subnet is fine.
    other = ClusterNetwork.from_mapping(
        {"gateway": "10.77.0.1", "dhcp_start": "10.77.0.50", "dhcp_end": "10.77.0.99"}
    )
    cluster.preflight(other, isolate=True)


def test_our_own_macvlan_does_not_count_in_host_mode(tmp_path: Path) -> None:
    cluster = BareMetalCluster("c1", StateDir(tmp_path), FakeRunner(ADDRS))
    cluster.script_journal.record("link", "ciaovlan")
    cluster.preflight(ClusterNetwork.from_mapping(), isolate=False)


def test_missing_dnsmasq_is_named_with_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "ip", "nsenter"):
        (bindir / tool).write_text("#!/bin/sh\n")
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    cluster = BareMetalCluster("c1", StateDir(tmp_path), FakeRunner())
    with pytest.raises(ToolMissingError) as info:
        cluster.preflight(ClusterNetwork.from_mapping(), isolate=True)
    assert str(info.value) == (
        "dnsmasq is not installed; the cluster network needs it (sudo apt-get install dnsmasq-base)"
    )


def test_no_passwordless_sudo_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sudo at all
    with pytest.raises(CcloudvmError, match="passwordless sudo is not set up"):
        HostRunner(as_root=False).check_sudo()


def test_commands_before_setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = StateDir(tmp_path)
    scripts = {"setup": "true", "verify": "true", "cleanup": "true"}
    with pytest.raises(StateError, match="cluster c1 is not set up on this host"):
        run_baremetal("c1", scripts, "verify", state=state, runner=FakeRunner())
    result = run_baremetal("c1", scripts, "cleanup", state=state, runner=FakeRunner())
    assert result.ok
    assert "nothing to clean up: cluster c1 is not set up" in capsys.readouterr().err
    with pytest.raises(UsageError, match="has no cluster section"):
        run_baremetal("c1", {}, "setup", state=state, workload="debian", runner=FakeRunner())
    assert not (tmp_path / "clusters").exists()


def test_setup_in_another_mode_needs_a_cleanup_first(tmp_path: Path) -> None:
    cluster = BareMetalCluster("c1", StateDir(tmp_path), FakeRunner())
    cluster.dir.mkdir(parents=True)
    (cluster.dir / "mode").write_text("isolated\n")
    assert cluster.saved_mode() is True
    with pytest.raises(StateError, match="already set up in its own namespace"):
        run_baremetal(
            "c1",
            {"setup": "true"},
            "setup",
            state=StateDir(tmp_path),
            isolate=False,
            runner=FakeRunner(),
        )


@pytest.mark.parametrize("action", ["setup", "verify", "bat", "env", "cleanup"])
def test_every_action_checks_passwordless_sudo_first(
    action: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sudo at all
    scripts = dict.fromkeys(("setup", "verify", "bat", "env", "cleanup"), "true")
    with pytest.raises(CcloudvmError) as info:
        run_baremetal(
            "c1", scripts, action, state=StateDir(tmp_path), runner=HostRunner(as_root=False)
        )
    assert (
        info.value.message == "bare-metal clusters need root, and passwordless sudo is not set up"
    )
    assert "NOPASSWD" in (info.value.hint or "")


def test_cleanup_fails_clearly_when_the_journal_cannot_be_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records of changes not undone are never dropped, and the state folder stays."""
    state = StateDir(tmp_path)
    cluster = BareMetalCluster("c1", state, FakeRunner())
    cluster.dir.mkdir(parents=True)
    (cluster.dir / "mode").write_text("isolated\n")  # its namespace is gone: Python undoes
    cluster.script_journal.record("link", "ciao_br")  # went with the namespace
    cluster.script_journal.record("file", "/etc/ciao/configuration.yaml")
    before = cluster.script_journal.path.read_text()

    class Refusing(FakeRunner):
        def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
            super().__call__(argv)
            refused = list(argv) == undo_argv(["file", "/etc/ciao/configuration.yaml"])
            return (1, "Operation not permitted") if refused else (0, "")

    def denied(**_: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("ccloudvm.cluster.journal.tempfile.mkstemp", denied)
    with pytest.raises(CcloudvmError) as info:
        run_baremetal("c1", {"cleanup": "true"}, "cleanup", state=state, runner=Refusing())
    assert "cannot rewrite the journal" in str(info.value)
    assert cluster.script_journal.path.read_text() == before
    assert cluster.dir.is_dir()
