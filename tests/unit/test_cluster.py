"""run_cluster_action and the cluster network parameters, with a target that plays a script."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from ccloudvm.cluster import network as cluster
from ccloudvm.cluster.network import (
    CHECK_ONLY_MARKER,
    ClusterNetwork,
    check_cluster_name,
    check_setup,
    run_cluster_action,
)
from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.remote.target import OutputSink


class ScriptedTarget:
    """Prints the given lines as the script's output and exits with `status`."""

    name = "scripted"

    def __init__(self, lines: list[str], status: int = 0) -> None:
        self.lines = lines
        self.status = status
        self.calls: list[tuple[list[str], dict[str, str], bool]] = []

    def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        output: OutputSink | None = None,
        sudo: bool = False,
        timeout: float | None = None,
    ) -> int:
        self.calls.append((argv, dict(env or {}), sudo))
        for line in self.lines:
            assert output is not None
            output(line)
        return self.status

    def put_file(self, local: Path, remote: str, *, mode: int = 0o644) -> None:
        raise AssertionError("cluster scripts are not uploaded")

    def put_text(self, text: str, remote: str, *, mode: int = 0o644) -> None:
        raise AssertionError("cluster scripts are not uploaded")


SCRIPTS = {a: f"echo {a}" for a in ("setup", "verify", "bat", "cleanup", "env")}


def test_setup_runs_the_script_as_root_with_the_cluster_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = ScriptedTarget(["STEP: bridge", "noise", "STEP: dnsmasq"])
    result = run_cluster_action(
        target, SCRIPTS, "setup", cluster_name="c1", state_dir="/var/lib/x/c1", nat=True
    )
    assert result.ok and result.lines == ["STEP: bridge", "noise", "STEP: dnsmasq"]
    argv, env, sudo = target.calls[0]
    assert argv == ["bash", "-eu", "-c", "echo setup", "ccloudvm-cluster-setup"]
    assert sudo is True
    assert env["CLUSTER_NAME"] == "c1"
    assert env["CLUSTER_STATE_DIR"] == "/var/lib/x/c1"
    assert env["CLUSTER_NAT"] == "1"
    assert env["CLUSTER_BRIDGE"] == "ciao_br" and env["CLUSTER_SUBNET"] == "198.51.100.0/24"
    err = capsys.readouterr().err
    assert "bridge ... OK" in err and "dnsmasq ... OK" in err
    assert "noise" not in err


def test_verify_counts_checks_and_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    target = ScriptedTarget(["PASS: lease", "FAIL: ping", "PASS: service"], status=1)
    result = run_cluster_action(target, SCRIPTS, "verify", cluster_name="c1", state_dir="/s")
    assert not result.ok
    assert result.passed == ["lease", "service"] and result.failed == ["ping"]
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("2 passed, 1 failed")
    assert "ping ... FAIL" in captured.err and "lease ... OK" in captured.err


def test_a_failing_step_shows_the_scripts_reason(capsys: pytest.CaptureFixture[str]) -> None:
    target = ScriptedTarget(["STEP: DHCP", "ERROR: dnsmasq is not installed"], status=1)
    result = run_cluster_action(target, SCRIPTS, "setup", cluster_name="c1", state_dir="/s")
    assert not result.ok and result.error == "dnsmasq is not installed"
    err = capsys.readouterr().err
    assert "DHCP ... FAIL" in err
    assert err.splitlines()[-1] == "cluster setup failed: dnsmasq is not installed"


def test_failure_without_a_reason_shows_the_last_lines(capsys: pytest.CaptureFixture[str]) -> None:
    target = ScriptedTarget([f"line {i}" for i in range(30)], status=2)
    result = run_cluster_action(target, SCRIPTS, "cleanup", cluster_name="c1", state_dir="/s")
    assert result.status == 2
    err = capsys.readouterr().err
    assert "exited with status 2" in err and "line 29" in err and "line 10" not in err


def test_env_goes_to_stdout_verbatim(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = ScriptedTarget(["export CIAO_CONTROLLER=[host]"])
    log = tmp_path / "logs" / "env.log"
    run_cluster_action(target, SCRIPTS, "env", cluster_name="c1", state_dir="/s", log_path=log)
    assert capsys.readouterr().out == "export CIAO_CONTROLLER=[host]\n"
    assert log.read_text() == "export CIAO_CONTROLLER=[host]\n"


def test_a_workload_without_a_cluster_section_is_a_usage_error() -> None:
    target = ScriptedTarget([])
    with pytest.raises(UsageError, match="workload debian has no cluster section"):
        run_cluster_action(target, {}, "setup", cluster_name="c", state_dir="/s", workload="debian")
    with pytest.raises(UsageError, match="has no cluster bat script"):
        run_cluster_action(target, {"setup": "true"}, "bat", cluster_name="c", state_dir="/s")
    with pytest.raises(UsageError, match="unknown cluster action 'deploy'"):
        run_cluster_action(target, SCRIPTS, "deploy", cluster_name="c", state_dir="/s")
    assert target.calls == []


@pytest.mark.parametrize("name", ["ok-1", "A", "x" * 40])
def test_good_cluster_names(name: str) -> None:
    assert check_cluster_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 41, "a;rm"])
def test_bad_cluster_names(name: str) -> None:
    with pytest.raises(UsageError):
        check_cluster_name(name)


def test_network_overrides() -> None:
    net = ClusterNetwork.from_mapping(
        {"gateway": "10.9.0.1", "prefix": 16, "dhcp_start": "10.9.1.0", "dhcp_end": "10.9.1.9"}
    )
    env = net.as_env()
    assert env["CLUSTER_SUBNET"] == "10.9.0.0/16" and env["CLUSTER_PREFIX"] == "16"
    assert env["CLUSTER_DNS_PORT"] == "53"  # DNS on by default, as ciao's singlevm had it
    assert ClusterNetwork.from_mapping({"dns": False}).as_env()["CLUSTER_DNS_PORT"] == "0"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bridg": "x"}, "unknown cluster network parameter 'bridg'"),
        ({"bridge": "a-name-longer-than-15"}, "not a valid link name"),
        ({"macvlan": "ciao_br"}, "must have different names"),
        ({"gateway": "198.51.100.300"}, "bad cluster network address"),
        ({"prefix": 31}, "between /8 and /30"),
        ({"dhcp_end": "198.51.101.5"}, "ascending range of host addresses"),
        ({"dhcp_start": "198.51.100.120"}, "ascending range"),
        ({"gateway": "198.51.100.60"}, "outside the DHCP range"),
        ({"gateway": "198.51.100.0"}, "not a host address"),
        ({"lease_time": "12 hours"}, "is not like 12h"),
        ({"external_interface": "eth0;reboot"}, "is not a link name"),
    ],
)
def test_bad_network_parameters(values: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ClusterNetwork.from_mapping(values)


def test_unknown_parameter_suggests_the_close_one() -> None:
    with pytest.raises(UsageError) as info:
        ClusterNetwork.from_mapping({"dhcp_stat": "198.51.100.60"})
    assert info.value.hint == "did you mean 'dhcp_start'?"


def _last(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("action", "lines", "summary"),
    [
        ("setup", ["STEP: bridge", "DONE: cluster c1 is up (9 changes recorded)"], "cluster c1 is up (9 changes recorded)"),
        ("setup", ["STEP: bridge"], "cluster c1 is set up"),
        ("cleanup", ["DONE: nothing to clean up: cluster c1 is not set up here"], "nothing to clean up: cluster c1 is not set up here"),
        ("cleanup", ["STEP: undoing 3 recorded changes"], "cluster c1 is cleaned up"),
        ("env", ["export A=1"], "printed the environment of cluster c1"),
    ],
)  # fmt: skip
def test_every_action_ends_with_a_summary_line(
    action: str, lines: list[str], summary: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cluster_action(
        ScriptedTarget(lines), SCRIPTS, action, cluster_name="c1", state_dir="/s"
    )
    assert result.ok and result.done == summary
    captured = capsys.readouterr()
    assert _last(captured.err) == summary
    if action == "env":
        assert captured.out == "export A=1\n"


def test_the_caller_may_print_the_summary_itself(capsys: pytest.CaptureFixture[str]) -> None:
    target = ScriptedTarget(["DONE: cluster c1 is cleaned up (3 changes undone)"])
    result = run_cluster_action(
        target, SCRIPTS, "cleanup", cluster_name="c1", state_dir="/s", summary=False
    )
    assert result.done == "cluster c1 is cleaned up (3 changes undone)"
    assert "cleaned up" not in capsys.readouterr().err


def test_verify_keeps_its_count_as_the_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    target = ScriptedTarget(["PASS: a", "PASS: b"])
    run_cluster_action(target, SCRIPTS, "verify", cluster_name="c1", state_dir="/s")
    assert _last(capsys.readouterr().out) == "2 passed, 0 failed"


def test_the_test_pause_hook_ignores_the_users_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CCLOUDVM_TEST_PAUSE_AFTER_CHANGES", "1")
    monkeypatch.setenv("CCLOUDVM_CLUSTER_CHECK_ONLY", "1")
    target = ScriptedTarget([])
    run_cluster_action(target, SCRIPTS, "setup", cluster_name="c1", state_dir="/s")
    env = target.calls[0][1]
    assert env["CCLOUDVM_TEST_PAUSE_AFTER_CHANGES"] == ""
    assert env["CCLOUDVM_CLUSTER_CHECK_ONLY"] == "0"
    monkeypatch.setattr(cluster, "TEST_PAUSE_AFTER_CHANGES", 4)
    run_cluster_action(target, SCRIPTS, "setup", cluster_name="c1", state_dir="/s")
    assert target.calls[1][1]["CCLOUDVM_TEST_PAUSE_AFTER_CHANGES"] == "4"


def test_check_setup_runs_only_scripts_that_support_it() -> None:
    target = ScriptedTarget(["ERROR: busybox is not installed (apt-get install busybox-static)"], 1)
    assert not check_setup(target, SCRIPTS, cluster_name="c1", state_dir="/s")
    assert target.calls == []  # a script without the marker would really set up
    scripts = {**SCRIPTS, "setup": f"{CHECK_ONLY_MARKER}\necho setup"}
    with pytest.raises(CcloudvmError) as info:
        check_setup(target, scripts, cluster_name="c1", state_dir="/s")
    assert str(info.value) == "busybox is not installed (apt-get install busybox-static)"
    argv, env, sudo = target.calls[0]
    assert env["CCLOUDVM_CLUSTER_CHECK_ONLY"] == "1" and sudo
    assert check_setup(ScriptedTarget(["DONE: ok"]), scripts, cluster_name="c1", state_dir="/s")
