"""The test cluster on bare metal, for real: namespaces, bridge, dnsmasq, tenants, a service.

Each test compares the host before and after: links, routes, firewall, namespaces and
the cluster's kind of processes must be exactly as they were. Needs root, iproute2,
dnsmasq-base, busybox-static and iptables.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
import yaml

from ccloudvm.cluster import ACTIONS, run_cluster_action
from ccloudvm.errors import StateError, ToolMissingError, UsageError
from ccloudvm.local_target import LocalTarget
from ccloudvm.netns import NETNS_DIR, BareMetalCluster, run_baremetal
from ccloudvm.paths import StateDir

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


def host_snapshot() -> dict[str, object]:
    snap: dict[str, object] = {
        "links": _out("ip", "-o", "link"),
        "addresses": _out("ip", "-o", "addr"),
        "routes": _out("ip", "route"),
        "netns": _out("ip", "netns"),
        "iptables": [
            line for line in _out("iptables-save").splitlines() if not line.startswith("#")
        ],
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
    verify = run_baremetal(name, scripts, "verify", state=state, network=network)
    cleanup = run_baremetal(name, scripts, "cleanup", state=state, network=network)
    elapsed = time.monotonic() - start
    assert verify.ok, verify.failed
    assert len(verify.passed) == 7 and verify.failed == []
    assert cleanup.ok

    out = capsys.readouterr().out
    assert "7 passed, 0 failed" in out
    _wait_processes_gone(before["processes"])  # type: ignore[arg-type]
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
    assert "-i ciao_br -j ACCEPT" in _out("iptables", "-S", "FORWARD")
    assert not (NETNS_DIR / f"ccloudvm-{name}").exists()
    assert run_baremetal(name, scripts, "verify", state=state, network=network).ok
    assert run_baremetal(name, scripts, "cleanup", state=state, network=network).ok
    _wait_processes_gone(before["processes"])  # type: ignore[arg-type]
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


CHILD = """
import json, sys
from pathlib import Path
from ccloudvm.netns import run_baremetal
from ccloudvm.paths import StateDir
d = json.loads(Path(sys.argv[1]).read_text())
run_baremetal(d["name"], d["scripts"], "setup", state=StateDir(Path(d["state"])),
              network=d["network"])
"""


@pytest.mark.parametrize("changes", [2, 9, 10, 14])  # the test cluster records 14
def test_cleanup_after_setup_killed_half_way(
    workload: tuple[dict[str, str], dict[str, object]],
    cluster: tuple[str, StateDir],
    tmp_path: Path,
    changes: int,
) -> None:
    scripts, network = workload
    name, state = cluster
    before = host_snapshot()
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"name": name, "scripts": scripts, "state": str(state.root), "network": network})
    )
    journal = BareMetalCluster(name, state).dir / "journal"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLUSTER_PAUSE_AFTER_CHANGES": str(changes)}
    child = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-c", CHILD, str(spec)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and len(journal.read_text().splitlines()) >= changes:
                break
            assert child.poll() is None, "setup ended before reaching the pause point"
            time.sleep(0.05)
        else:
            pytest.fail(f"setup never recorded {changes} changes")
        time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # the crash: setup, nsenter and bash at once
        child.wait()
    assert (NETNS_DIR / f"ccloudvm-{name}").exists()
    recorded = journal.read_text().splitlines()
    daemon = [i for i, line in enumerate(recorded) if line.startswith("pidfile dnsmasq")]
    if daemon and daemon[0] < len(recorded) - 1:
        assert "dnsmasq" in _processes()  # the crash left a daemon running

    result = run_baremetal(name, scripts, "cleanup", state=state, network=network)
    assert result.ok
    _wait_processes_gone(before["processes"])  # type: ignore[arg-type]
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
    journal = (bm.dir / "journal").read_text()
    dnsmasq = (bm.dir / "run" / "dnsmasq.pid").read_text()
    links = _out("ip", "netns", "exec", bm.netns, "ip", "-o", "link")
    rules = _out("ip", "netns", "exec", bm.netns, "iptables", "-S")
    capsys.readouterr()

    again = run_baremetal(name, scripts, "setup", state=state, network=network)
    assert again.ok
    assert "already set up" in capsys.readouterr().err
    assert (bm.dir / "journal").read_text() == journal
    assert (bm.dir / "run" / "dnsmasq.pid").read_text() == dnsmasq
    assert _out("ip", "netns", "exec", bm.netns, "ip", "-o", "link") == links
    assert _out("ip", "netns", "exec", bm.netns, "iptables", "-S") == rules
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
