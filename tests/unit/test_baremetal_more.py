"""Bare-metal setup, verify, roll-back and cleanup end to end in the host namespace mode:
the scripts really run (bash, on this host, writing only under the cluster's state folder
in tmp_path); the root commands on the host (ip, the journal's undo) go to a recording
runner, and the namespace folder is a temporary one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from ccloudvm.cluster import baremetal
from ccloudvm.cluster.baremetal import BareMetalCluster, HostRunner, NamespaceTarget, run_baremetal
from ccloudvm.cluster.journal import undo_argv
from ccloudvm.core.errors import CcloudvmError, StateError
from ccloudvm.remote.local import LocalTarget
from ccloudvm.state.paths import StateDir

JOURNAL_A_FILE = 'printf "file %s\\n" "$CLUSTER_STATE_DIR/made" >> "$CLUSTER_STATE_DIR/journal"\n'


class HostRoot(HostRunner):
    """Root's commands on the host, recorded; `refuse` names undo entries that fail."""

    def __init__(self, refuse: Sequence[str] = ()) -> None:
        super().__init__(as_root=True)
        self.calls: list[list[str]] = []
        self.refuse = [undo_argv(words.split()) for words in refuse]

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        if list(argv) in self.refuse:
            return 1, "ERROR: Operation not permitted"
        return 0, ""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    monkeypatch.setattr(baremetal, "NETNS_DIR", tmp_path / "netns")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dnsmasq", "ip"):  # found on PATH by the preflight; never run from there
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return StateDir(tmp_path / "state")


def _scripts(setup: str = "echo set up\n") -> dict[str, str]:
    return {"setup": setup, "verify": "echo verified\n", "cleanup": "echo cleaned\n"}


def test_a_host_mode_setup_runs_its_script_and_remembers_the_mode(
    host: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_baremetal("c1", _scripts(), "setup", state=host, isolate=False, runner=HostRoot())
    assert result.ok
    cluster = BareMetalCluster("c1", host)
    assert (cluster.dir / "mode").read_text() == "host\n"
    assert cluster.saved_mode() is False and cluster.is_set_up()
    assert "set up" in (cluster.dir / "setup.log").read_text()
    again = run_baremetal("c1", _scripts(), "setup", state=host, runner=HostRoot())
    assert again.ok
    assert "cluster c1 is already set up; setting it up again changes nothing" in (
        capsys.readouterr().err
    )
    verified = run_baremetal("c1", _scripts(), "verify", state=host, runner=HostRoot())
    assert verified.ok and "verified" in (cluster.dir / "verify.log").read_text()


def test_a_first_setup_that_fails_before_changing_anything_is_rolled_back(
    host: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = HostRoot()
    result = run_baremetal(
        "c1", _scripts("echo 'ERROR: no ciao here'; exit 3\n"), "setup", state=host,
        isolate=False, runner=runner,
    )  # fmt: skip
    assert not result.ok and result.error == "no ciao here"
    assert runner.calls[-1] == ["rm", "-rf", "--", str(BareMetalCluster("c1", host).dir)]
    assert "setup of cluster c1 changed nothing: namespace and state removed again" in (
        capsys.readouterr().err
    )


def test_a_failed_setup_that_changed_something_points_at_cleanup(
    host: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_baremetal(
        "c1", _scripts(JOURNAL_A_FILE + "exit 1\n"), "setup", state=host, isolate=False,
        runner=HostRoot(),
    )  # fmt: skip
    assert not result.ok
    cluster = BareMetalCluster("c1", host)
    assert cluster.script_journal.has("file", str(cluster.dir / "made"))
    assert "run 'ccloudvm baremetal cleanup' to undo what setup of c1 made" in (
        capsys.readouterr().err
    )


def test_cleanup_runs_the_script_undoes_its_journal_and_removes_the_state(
    host: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = HostRoot()
    run_baremetal("c1", _scripts(JOURNAL_A_FILE), "setup", state=host, isolate=False, runner=runner)
    cluster = BareMetalCluster("c1", host)
    result = run_baremetal("c1", _scripts(), "cleanup", state=host, runner=runner)
    assert result.ok
    assert undo_argv(["file", str(cluster.dir / "made")]) in runner.calls  # the script kept it
    assert ["rm", "-rf", "--", str(cluster.dir)] in runner.calls
    assert "cluster c1 is cleaned up (host namespace restored)" in capsys.readouterr().err


def test_a_cleanup_that_cannot_undo_a_change_keeps_the_state_and_says_what(
    host: StateDir,
) -> None:
    run_baremetal("c1", _scripts(JOURNAL_A_FILE), "setup", state=host, isolate=False,
                  runner=HostRoot())  # fmt: skip
    cluster = BareMetalCluster("c1", host)
    made = str(cluster.dir / "made")
    with pytest.raises(CcloudvmError) as info:
        run_baremetal("c1", _scripts(), "cleanup", state=host, runner=HostRoot([f"file {made}"]))
    assert info.value.message == (
        f"cleanup of cluster c1 left 1 change(s): file {made}: Operation not permitted"
    )
    assert info.value.hint == f"see {cluster.dir}; run cleanup again after fixing it"
    assert cluster.script_journal.has("file", made)  # kept for the next try


def test_an_isolated_cluster_whose_namespace_is_gone_says_so(host: StateDir) -> None:
    cluster = BareMetalCluster("c1", host)
    cluster.dir.mkdir(parents=True)
    (cluster.dir / "mode").write_text("isolated\n")
    with pytest.raises(StateError) as info:
        run_baremetal("c1", _scripts(), "verify", state=host, runner=HostRoot())
    assert info.value.message == (
        "the namespace ccloudvm-c1 of cluster c1 is gone (host rebooted?)"
    )


def test_cleanup_of_a_vanished_namespace_undoes_the_host_journal(
    host: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = HostRoot()
    cluster = BareMetalCluster("c1", host, runner)
    cluster.up(True)  # the namespace is "made" by the runner: its folder never appears
    assert cluster.host_journal.has("netns", "ccloudvm-c1")
    result = run_baremetal("c1", _scripts(), "cleanup", state=host, runner=runner)
    assert result.ok
    assert undo_argv(["netns", "ccloudvm-c1"]) in runner.calls
    assert "cluster c1 is cleaned up (namespace ccloudvm-c1 removed)" in capsys.readouterr().err


def test_a_namespace_of_the_same_name_not_ours_is_refused(host: StateDir, tmp_path: Path) -> None:
    (tmp_path / "netns").mkdir()
    (tmp_path / "netns" / "ccloudvm-c1").write_text("")
    cluster = BareMetalCluster("c1", host, HostRoot())
    with pytest.raises(StateError) as info:
        cluster.up(True)
    assert info.value.message == "network namespace ccloudvm-c1 exists but was not made by ccloudvm"
    assert info.value.hint == "remove it with 'sudo ip netns del ccloudvm-c1'"


def test_a_host_command_that_fails_is_named_with_its_output(host: StateDir) -> None:
    class Failing(HostRoot):
        def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
            super().__call__(argv)
            return 2, "RTNETLINK answers: Operation not permitted\n"

    with pytest.raises(CcloudvmError) as info:
        BareMetalCluster("c1", host, Failing()).up(True)
    assert info.value.message == (
        "ip netns add ccloudvm-c1 failed: RTNETLINK answers: Operation not permitted"
    )
    with pytest.raises(CcloudvmError, match="cannot list the host's addresses: RTNETLINK"):
        baremetal.host_addresses(Failing())


def test_the_host_runner_runs_root_commands_and_returns_their_output() -> None:
    assert HostRunner(as_root=True)(["sh", "-c", "echo hi; exit 3"]) == (3, "hi\n")
    HostRunner(as_root=True).check_sudo()  # root needs no sudo


def test_a_namespace_target_copies_files_on_this_host(tmp_path: Path) -> None:
    target = NamespaceTarget("ccloudvm-c1", LocalTarget("localhost"))
    target.put_text("hello\n", str(tmp_path / "a.txt"), mode=0o600)
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o600
    target.put_file(tmp_path / "a.txt", str(tmp_path / "b.txt"))
    assert (tmp_path / "b.txt").read_text() == "hello\n"


def test_a_user_finds_tools_in_sbin_as_sudo_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert baremetal._which("sh", as_root=True) is None
    found = baremetal._which("dnsmasq", as_root=False) or baremetal._which("ip", as_root=False)
    if found is not None:
        assert found.startswith(("/usr/sbin/", "/sbin/"))
