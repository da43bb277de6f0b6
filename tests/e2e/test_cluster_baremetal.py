"""The test cluster on bare metal, for real: namespaces, bridge, dnsmasq, tenants, a service.

Each test compares the host before and after: links, routes, firewall, namespaces and
the cluster's kind of processes must be exactly as they were. Needs root, iproute2,
dnsmasq-base, busybox-static and iptables.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from ccloudvm.cluster.baremetal import (
    NETNS_DIR,
    BareMetalCluster,
    NamespaceTarget,
    run_baremetal,
    veth_plan,
)
from ccloudvm.cluster.network import ACTIONS, run_cluster_action
from ccloudvm.core.errors import CcloudvmError, StateError, ToolMissingError, UsageError
from ccloudvm.remote.local import LocalTarget
from ccloudvm.state.paths import StateDir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="bare-metal clusters need root"),
]

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = REPO / "tests" / "workloads" / "cluster-test.yaml"
WATCHED = {"dnsmasq", "busybox", "udhcpc", "httpd", "nsenter"}


def render_cluster(path: Path) -> tuple[dict[str, str], dict[str, object]]:
    """The workload's cluster scripts, rendered as workload.py does (same Jinja2 settings)."""
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        loader=jinja2.FileSystemLoader(str(REPO / "templates")),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    section = yaml.safe_load(path.read_text())["cluster"]
    scripts = {name: env.get_template(section[name]).render() for name in ACTIONS}
    return scripts, dict(section.get("network") or {})


def _out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _processes() -> list[str]:
    """Command names of the cluster's kind of processes still running (zombies excluded)."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name in WATCHED and text.rpartition(") ")[2][:1] != "Z":
            names.append(name)
    return sorted(names)


def _rules(saved: str) -> list[str]:
    """iptables-save output without its comments and packet counters (traffic moves them)."""
    return [
        re.sub(r" ?\[\d+:\d+\]", "", line)
        for line in saved.splitlines()
        if not line.startswith("#")
    ]


def _addresses(text: str) -> str:
    """`ip -o addr` without what moves on its own: lease lifetimes counting down, and
    IPv6's "tentative" while duplicate address detection runs on a new link."""
    return "\n".join(
        re.sub(r" valid_lft.*", "", line).replace(" tentative", "") for line in text.splitlines()
    )


def _netns_names(snap: dict[str, Any]) -> set[str]:
    return {line.split()[0] for line in snap["netns"].splitlines() if line.strip()}


def host_snapshot() -> dict[str, Any]:
    snap: dict[str, Any] = {
        "links": _out("ip", "-o", "link"),
        "addresses": _addresses(_out("ip", "-o", "addr")),
        "routes": _out("ip", "route"),
        "routes6": _out("ip", "-6", "route"),
        "rules": _out("ip", "rule"),
        "rules6": _out("ip", "-6", "rule"),
        "netns": _out("ip", "netns"),
        "iptables": _rules(_out("iptables-save")),
        "processes": _processes(),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }
    if shutil.which("nft"):
        snap["nft"] = _out("nft", "list", "ruleset")
    return snap


@pytest.fixture(scope="module")
def workload() -> tuple[dict[str, str], dict[str, object]]:
    return render_cluster(WORKLOAD)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, StateDir]]:
    """A unique cluster name and state folder; everything it made is gone afterwards."""
    name = f"e2e-{secrets.token_hex(3)}"
    state = StateDir(tmp_path / "home")
    try:
        yield name, state
    finally:
        _force_cleanup(name, state)


def _force_cleanup(name: str, state: StateDir) -> None:
    scripts, network = render_cluster(WORKLOAD)
    try:
        run_baremetal(name, scripts, "cleanup", state=state, network=network)
    except Exception as exc:  # noqa: BLE001 - the brute-force pass below still runs
        print(f"cleanup raised: {exc}")
    # Whatever is left, by the names this test owns.
    for ns in (f"ccloudvm-{name}", f"{name}-t1", f"{name}-t2"):
        if (NETNS_DIR / ns).exists():
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                subprocess.run(["kill", "-KILL", pid], check=False)
            subprocess.run(["ip", "netns", "del", ns], check=False)
    pidfile = BareMetalCluster(name, state).dir / "run" / "dnsmasq.pid"
    if pidfile.exists():
        subprocess.run(["kill", "-KILL", pidfile.read_text().strip()], check=False)


def _wait_processes_gone(before: list[str], timeout: float = 5.0) -> None:
    # Killed daemons are reaped by init a moment later; give it that moment.
    deadline = time.monotonic() + timeout
    while _processes() != before and time.monotonic() < deadline:
        time.sleep(0.1)


def test_isolated_cycle_leaves_host_untouched(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
    capsys: pytest.CaptureFixture[str],
    record_property: object,
) -> None:
    scripts, network = workload
    name, state = cluster
    before = host_snapshot()

    start = time.monotonic()
    setup = run_baremetal(name, scripts, "setup", state=state, network=network)
    assert setup.ok, setup.error
    assert (NETNS_DIR / f"ccloudvm-{name}").exists()
    assert (NETNS_DIR / f"{name}-t1").exists() and (NETNS_DIR / f"{name}-t2").exists()
    # While it runs: only the host end of the veth is new on the host (no address, no
    # route, no rule), and the namespaces (their names are global).
    during = host_snapshot()
    veth = veth_plan(name).host
    links = during["links"].splitlines()
    assert [line for line in links if f": {veth}@" not in line] == before["links"].splitlines()
    assert len(links) == len(before["links"].splitlines()) + 1
    for key in ("addresses", "routes", "routes6", "rules", "rules6", "iptables", "nft"):
        assert during.get(key) == before.get(key), key
    assert during["ip_forward"] == before["ip_forward"]
    assert _netns_names(during) == _netns_names(before) | {
        f"ccloudvm-{name}",
        f"{name}-t1",
        f"{name}-t2",
    }
    verify = run_baremetal(name, scripts, "verify", state=state, network=network)
    cleanup = run_baremetal(name, scripts, "cleanup", state=state, network=network)
    elapsed = time.monotonic() - start
    assert verify.ok, verify.failed
    assert len(verify.passed) == 9 and verify.failed == []
    assert cleanup.ok

    out = capsys.readouterr().out
    assert "9 passed, 0 failed" in out
    _wait_processes_gone(before["processes"])
    assert host_snapshot() == before
    assert not BareMetalCluster(name, state).dir.exists()
    print(f"bare metal setup -> verify -> cleanup: {elapsed:.1f} s")
    record_property("baremetal_cycle_seconds", round(elapsed, 2))  # type: ignore[operator]


def test_no_isolation_cycle_undoes_its_host_changes(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
) -> None:
    """--no-isolation: bridge, rules and forwarding land on the host, and all go again."""
    scripts, network = workload
    name, state = cluster
    before = host_snapshot()
    setup = run_baremetal(name, scripts, "setup", state=state, network=network, isolate=False)
    assert setup.ok, setup.error
    assert "ciao_br" in _out("ip", "-o", "link")
    # A firewall is opened only where there is one (a filter table): see the test below.
    opened = "-i ciao_br -j ACCEPT" in _out("iptables", "-S", "FORWARD")
    assert opened == ("*filter" in before["iptables"])
    assert not (NETNS_DIR / f"ccloudvm-{name}").exists()
    assert run_baremetal(name, scripts, "verify", state=state, network=network).ok
    assert run_baremetal(name, scripts, "cleanup", state=state, network=network).ok
    _wait_processes_gone(before["processes"])
    assert host_snapshot() == before


def test_bat_and_env(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
    capsys: pytest.CaptureFixture[str],
) -> None:
    scripts, network = workload
    name, state = cluster
    assert run_baremetal(name, scripts, "setup", state=state, network=network).ok
    bat = run_baremetal(name, scripts, "bat", state=state, network=network)
    assert bat.ok and len(bat.passed) == 4
    capsys.readouterr()
    assert run_baremetal(name, scripts, "env", state=state, network=network).ok
    env_text = capsys.readouterr().out
    assert f"export CLUSTER_NAME='{name}'" in env_text
    assert "export CLUSTER_GATEWAY='198.51.100.1'" in env_text
    assert "CLUSTER_SERVICE_URL='http://198.51.100." in env_text


@contextlib.contextmanager
def scratch_netns(prefix: str) -> Iterator[str]:
    """A network namespace of the test's own, with whatever runs in it gone afterwards."""
    ns = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-KILL", pid], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _in(ns: str, *argv: str) -> str:
    return _out("ip", "netns", "exec", ns, *argv)


def test_a_firewall_is_opened_with_records_and_closed_again(
    workload: tuple[dict[str, str], dict[str, Any]],
    cluster: tuple[str, StateDir],
    tmp_path: Path,
) -> None:
    """Like --no-isolation on a host whose firewall drops forwarding: in a namespace the
    test makes, with a DROP policy and a rule of its own, the cluster adds its ACCEPT
    rules (journaled) and cleanup leaves the firewall exactly as it was."""
    scripts, network = workload
    name, _ = cluster
    with scratch_netns("ccvt-fw") as ns:
        _in(ns, "iptables", "-P", "FORWARD", "DROP")
        _in(ns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP")
        firewall = _in(ns, "iptables", "-S")
        tables = _in(ns, "nft", "list", "tables") if shutil.which("nft") else ""
        target = NamespaceTarget(ns)
        state_dir = str(tmp_path / "fw state")
        kwargs: dict[str, Any] = {"cluster_name": name, "state_dir": state_dir, "network": network}
        assert run_cluster_action(target, scripts, "setup", **kwargs).ok
        rules = _in(ns, "iptables", "-S")
        assert "-A FORWARD -i ciao_br -j ACCEPT" in rules
        assert "-A INPUT -i ciaovlan -p udp -m udp --dport 67 -j ACCEPT" in rules
        assert run_cluster_action(target, scripts, "verify", **kwargs).ok
        assert run_cluster_action(target, scripts, "cleanup", **kwargs).ok
        assert _in(ns, "iptables", "-S") == firewall
        if tables:
            assert _in(ns, "nft", "list", "tables") == tables
        assert len(_in(ns, "ip", "-o", "link").splitlines()) == 1  # lo only
        assert not Path(state_dir).exists()


def test_setup_refuses_a_subnet_in_use_inside_the_machine(
    workload: tuple[dict[str, str], dict[str, Any]],
    cluster: tuple[str, StateDir],
    tmp_path: Path,
) -> None:
    """The script's own check (what runs inside a VM): one line, nothing made."""
    scripts, network = workload
    name, _ = cluster
    with scratch_netns("ccvt-sub") as ns:
        _in(ns, "ip", "link", "add", "lab0", "type", "bridge")
        _in(ns, "ip", "addr", "add", "198.51.100.7/24", "dev", "lab0")
        links = _in(ns, "ip", "-o", "link")
        state_dir = tmp_path / "sub state"
        result = run_cluster_action(
            NamespaceTarget(ns), scripts, "setup", cluster_name=name, state_dir=str(state_dir),
            network=network,
        )  # fmt: skip
        assert not result.ok
        assert result.error == (
            "the cluster subnet 198.51.100.0/24 is already used on this machine "
            "(198.51.100.7/24 on lab0); remove that address, or set another gateway/prefix "
            "in the workload's cluster network"
        )
        assert _in(ns, "ip", "-o", "link") == links
        assert not state_dir.exists()


CHILD = """
import json, sys
from pathlib import Path
from ccloudvm.cluster import network
from ccloudvm.cluster.baremetal import run_baremetal
from ccloudvm.state.paths import StateDir
d = json.loads(Path(sys.argv[1]).read_text())
network.TEST_PAUSE_AFTER_CHANGES = d["changes"]  # the test hook; never from the environment
run_baremetal(d["name"], d["scripts"], "setup", state=StateDir(Path(d["state"])),
              network=d["network"])
"""

# The crash inside the host-side namespace setup: stop once the veth pair exists, before
# its host end is up (the namespace and the link are made, the scripts never ran).
CHILD_HOST = """
import json, sys, time
from pathlib import Path
from ccloudvm.cluster import baremetal as netns
from ccloudvm.state.paths import StateDir
d = json.loads(Path(sys.argv[1]).read_text())
must = netns.BareMetalCluster._must
def pausing(self, argv):
    must(self, argv)
    if "veth" in argv:
        Path(d["paused"]).write_text("veth made")
        time.sleep(3600)
netns.BareMetalCluster._must = pausing
netns.run_baremetal(d["name"], d["scripts"], "setup", state=StateDir(Path(d["state"])),
                    network=d["network"])
"""


def _kill_when(child: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    """Wait for the child to reach its pause point, then crash it (and all it started)."""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ready():
                break
            assert child.poll() is None, "setup ended before reaching the pause point"
            time.sleep(0.05)
        else:
            pytest.fail("setup never reached the pause point")
        time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # the crash: setup, nsenter and bash at once
        child.wait()


def _start(code: str, spec: dict[str, Any], tmp_path: Path) -> subprocess.Popen[bytes]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-c", code, str(path)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_cleanup_after_a_crash_in_the_host_side_setup(
    workload: tuple[dict[str, str], dict[str, Any]],
    cluster: tuple[str, StateDir],
    tmp_path: Path,
) -> None:
    scripts, network = workload
    name, state = cluster
    before = host_snapshot()
    paused = tmp_path / "paused"
    spec = {"name": name, "scripts": scripts, "state": str(state.root), "network": network}
    child = _start(CHILD_HOST, {**spec, "paused": str(paused)}, tmp_path)
    _kill_when(child, paused.exists)
    bm = BareMetalCluster(name, state)
    assert bm.netns_exists()
    assert f": {veth_plan(name).host}@" in _out("ip", "-o", "link")
    assert not bm.script_journal.exists()

    result = run_baremetal(name, scripts, "cleanup", state=state, network=network)
    assert result.ok
    _wait_processes_gone(before["processes"])
    assert host_snapshot() == before
    assert not bm.dir.exists()


@pytest.mark.parametrize("changes", [2, 5, 6, 10])  # the test cluster records 10
def test_cleanup_after_setup_killed_half_way(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
    tmp_path: Path,
    changes: int,
) -> None:
    scripts, network = workload
    name, state = cluster
    before = host_snapshot()
    journal = BareMetalCluster(name, state).dir / "journal"
    spec = {"name": name, "scripts": scripts, "state": str(state.root), "network": network}
    child = _start(CHILD, {**spec, "changes": changes}, tmp_path)
    _kill_when(child, lambda: journal.exists() and len(journal.read_text().splitlines()) >= changes)
    assert (NETNS_DIR / f"ccloudvm-{name}").exists()
    assert len(journal.read_text().splitlines()) == changes  # it did stop there
    recorded = journal.read_text().splitlines()
    daemon = [i for i, line in enumerate(recorded) if line.startswith("pidfile dnsmasq")]
    if daemon and daemon[0] < len(recorded) - 1:
        assert "dnsmasq" in _processes()  # the crash left a daemon running

    result = run_baremetal(name, scripts, "cleanup", state=state, network=network)
    assert result.ok
    _wait_processes_gone(before["processes"])
    assert host_snapshot() == before
    assert not BareMetalCluster(name, state).dir.exists()


def test_cleanup_with_nothing_set_up(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
    capsys: pytest.CaptureFixture[str],
) -> None:
    scripts, network = workload
    name, state = cluster
    before = host_snapshot()
    result = run_baremetal(name, scripts, "cleanup", state=state, network=network)
    assert result.ok
    assert "nothing to clean up" in capsys.readouterr().err
    assert host_snapshot() == before


def test_setup_twice_changes_nothing(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
    capsys: pytest.CaptureFixture[str],
) -> None:
    scripts, network = workload
    name, state = cluster
    bm = BareMetalCluster(name, state)
    assert run_baremetal(name, scripts, "setup", state=state, network=network).ok

    def everything() -> dict[str, Any]:
        """The host, the cluster's namespace, its tenants and its state files."""
        snap = host_snapshot()
        for ns in (bm.netns, f"{name}-t1", f"{name}-t2"):
            for what in (["link"], ["route"], ["rule"]):
                snap[f"{ns} {what[0]}"] = _in(ns, "ip", "-o", *what)
            snap[f"{ns} addr"] = _addresses(_in(ns, "ip", "-o", "addr"))
            snap[f"{ns} pids"] = sorted(_out("ip", "netns", "pids", ns).split())
        snap["ns iptables"] = _rules(_in(bm.netns, "iptables-save"))
        snap["ns ip_forward"] = _in(bm.netns, "cat", "/proc/sys/net/ipv4/ip_forward")
        snap["journal"] = (bm.dir / "journal").read_text()
        snap["host.journal"] = (bm.dir / "host.journal").read_text()
        snap["run"] = sorted(p.name for p in (bm.dir / "run").iterdir())
        snap["dnsmasq"] = (bm.dir / "run" / "dnsmasq.pid").read_text()
        return snap

    first = everything()
    capsys.readouterr()
    again = run_baremetal(name, scripts, "setup", state=state, network=network)
    assert again.ok
    err = capsys.readouterr().err
    assert "already set up" in err and "FAIL" not in err
    assert everything() == first
    assert run_baremetal(name, scripts, "verify", state=state, network=network).ok


def test_dnsmasq_missing_fails_before_any_change(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripts, network = workload
    name, state = cluster
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in (
        "bash",
        "busybox",
        "ip",
        "nsenter",
        "cat",
        "id",
        "mkdir",
        "chmod",
        "grep",
        "sync",
        "wc",
    ):
        found = shutil.which(tool)
        assert found is not None
        (bindir / tool).symlink_to(found)
    before = host_snapshot()
    monkeypatch.setenv("PATH", str(bindir))

    with pytest.raises(ToolMissingError) as info:
        run_baremetal(name, scripts, "setup", state=state, network=network)
    assert "dnsmasq is not installed" in str(info.value)
    assert "apt-get install dnsmasq-base" in str(info.value)
    assert not BareMetalCluster(name, state).dir.exists()

    # The script checks too (it runs alone inside VMs): one ERROR line, nothing made.
    scratch = tmp_path / "scratch"
    result = run_cluster_action(
        LocalTarget(),
        scripts,
        "setup",
        cluster_name=name,
        state_dir=str(scratch),
        network=network,
    )
    assert not result.ok
    assert result.error == "dnsmasq is not installed (apt-get install dnsmasq-base)"
    assert not scratch.exists()
    monkeypatch.undo()
    assert host_snapshot() == before


def test_subnet_already_used_on_host(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
) -> None:
    scripts, network = workload
    name, state = cluster
    dummy = f"ccvt{secrets.token_hex(3)}"
    # A dummy link where the kernel has the module, else an (empty) bridge: both hold addresses.
    made = subprocess.run(["ip", "link", "add", dummy, "type", "dummy"], check=False)
    if made.returncode != 0:
        subprocess.run(["ip", "link", "add", dummy, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "198.51.100.7/24", "dev", dummy], check=True)
        before = host_snapshot()
        with pytest.raises(UsageError) as info:
            run_baremetal(name, scripts, "setup", state=state, network=network)
        assert "198.51.100.0/24 is already used on this host" in str(info.value)
        assert dummy in str(info.value)
        assert host_snapshot() == before
        assert not BareMetalCluster(name, state).dir.exists()
    finally:
        subprocess.run(["ip", "link", "del", dummy], check=False)


def test_cluster_commands_need_a_cluster_and_a_setup(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
) -> None:
    scripts, network = workload
    name, state = cluster
    with pytest.raises(UsageError, match="has no cluster section"):
        run_baremetal(name, {}, "setup", state=state, workload="debian")
    with pytest.raises(StateError, match="is not set up"):
        run_baremetal(name, scripts, "verify", state=state, network=network)
    assert not BareMetalCluster(name, state).dir.exists()


def test_the_cli_cycle_on_the_test_cluster(tmp_path: Path) -> None:
    """`ccloudvm baremetal setup|verify|cleanup tests/workloads/cluster-test.yaml`, for real."""
    name = f"e2e-cli-{secrets.token_hex(2)}"
    state = StateDir(tmp_path / "home")
    env = {**os.environ, "CCLOUDVM_HOME": str(state.root), "PYTHONPATH": str(REPO)}

    def ccloudvm(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - the tool under test, fixed argv
            [sys.executable, "-m", "ccloudvm", "baremetal", action, str(WORKLOAD), "--name", name],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
            check=False,
        )  # fmt: skip

    before = host_snapshot()
    try:
        setup = ccloudvm("setup")
        assert setup.returncode == 0, setup.stderr
        assert re.search(
            r"^bridge ciao_br and macvlan ciaovlan with 198\.51\.100\.1/24 \.\.\. OK",
            setup.stderr,
            re.M,
        )
        assert setup.stderr.splitlines()[-1].startswith(
            f"test cluster {name} is up: tenants {name}-t1 {name}-t2"
        )
        verify = ccloudvm("verify")
        assert verify.returncode == 0, verify.stderr
        assert verify.stdout.splitlines()[-1] == "9 passed, 0 failed"
        assert f"the service in {name}-t1 answers {name}-t2 ... OK" in verify.stderr
        cleanup = ccloudvm("cleanup")
        assert cleanup.returncode == 0, cleanup.stderr
        assert cleanup.stderr.splitlines()[-1] == (
            f"cluster {name} is cleaned up (namespace ccloudvm-{name} removed)"
        )
        again = ccloudvm("cleanup")
        assert again.returncode == 0
        assert again.stderr.splitlines() == [
            f"nothing to clean up: cluster {name} is not set up on this host"
        ]
        for result in (setup, verify, cleanup, again):
            assert "Traceback" not in result.stderr
    finally:
        _force_cleanup(name, state)
    _wait_processes_gone(before["processes"])
    assert host_snapshot() == before


def test_a_failing_ciao_setup_leaves_the_host_as_it_was(tmp_path: Path) -> None:
    """ciao's programs are missing here: setup stops before the namespace is made."""
    from ccloudvm.app.workflow import resolve

    state = StateDir(tmp_path / "home")
    ciao = resolve(state, "ciao", "ciao-e2e", bare_metal=True)
    before = host_snapshot()
    with pytest.raises(CcloudvmError) as info:
        run_baremetal("ciao-e2e", ciao.cluster, "setup", state=state, network=ciao.cluster_network)
    # ciao 194264a's own programs first (ciao-deploy sets the cluster up), then the rest
    assert str(info.value).startswith("ciao cannot run here, missing: ciao-deploy ciao-scheduler")
    assert host_snapshot() == before
    assert not BareMetalCluster("ciao-e2e", state).dir.exists()


def test_a_setup_failing_before_any_record_is_rolled_back(
    workload: tuple[dict[str, str], dict[str, Any]],
    cluster: tuple[str, StateDir],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A setup script without a check-only pass that fails at once: namespace and veth go."""
    scripts, network = workload
    name, state = cluster
    failing = {**scripts, "setup": "echo 'ERROR: not today'; exit 1"}
    before = host_snapshot()
    result = run_baremetal(name, failing, "setup", state=state, network=network)
    assert not result.ok and result.error == "not today"
    assert "changed nothing: namespace and state removed again" in capsys.readouterr().err
    assert host_snapshot() == before
    assert not BareMetalCluster(name, state).dir.exists()
