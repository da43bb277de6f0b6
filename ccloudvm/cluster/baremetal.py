"""Bare-metal clusters: the cluster scripts run on this host, in a network namespace of their own.

`ccloudvm-<name>` is joined to the host by one veth pair, without addresses (its host
end has IPv6 address generation off too, so not even a link-local route appears);
everything else the cluster makes (bridge, macvlan, dnsmasq, firewall rules, forwarding,
tenants) lives inside the namespace, so the host's addresses, routes and firewall never
see it. `isolate=False` runs the scripts in the host namespace instead;
their changes are journaled and undone by cleanup just the same.

Scripts run with `nsenter --net=...` rather than `ip netns exec`: the latter gives each
command a private mount namespace, so namespaces a script makes for its tenants
(`ip netns add`) would be invisible to the next script and to cleanup.

State: <state>/clusters/<name>/ holds `mode`, `host.journal` (what this module changed
on the host) and the scripts' own `journal`, `run/` files and logs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccloudvm.cluster.journal import Journal, JournalError
from ccloudvm.cluster.network import (
    DEFAULT_TIMEOUT,
    ClusterNetwork,
    ClusterResult,
    check_cluster_name,
    check_setup,
    run_cluster_action,
    script_for,
)
from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError, StateError, ToolMissingError, UsageError
from ccloudvm.core.proc import PACKAGE_OF, run
from ccloudvm.remote.local import LocalTarget
from ccloudvm.remote.target import OutputSink
from ccloudvm.state.paths import StateDir

NETNS_PREFIX = "ccloudvm-"
NETNS_DIR = Path("/run/netns")
INNER_VETH = "cvn0"
# Kinds of script-journal entries that outlive the cluster's namespace (names and
# processes are global), undone from Python when a cleanup script cannot finish.
GLOBAL_KINDS = ("netns", "pidfile", "file", "backup", "dir", "statedir", "docker")


def netns_name(cluster: str) -> str:
    return NETNS_PREFIX + check_cluster_name(cluster)


def clusters_dir(state: StateDir) -> Path:
    return state.root / "clusters"


@dataclass(frozen=True)
class VethPlan:
    """The veth pair joining a cluster's namespace to the host (no addresses: no host route)."""

    host: str
    inner: str


def veth_plan(cluster: str) -> VethPlan:
    """The pair's names, the host end's derived from the cluster name."""
    digest = hashlib.sha256(cluster.encode()).hexdigest()
    return VethPlan(host=f"cvh{digest[:8]}", inner=INNER_VETH)


class HostRunner:
    """Runs host programs as root and captures their output: directly, or via `sudo -n`."""

    def __init__(self, *, as_root: bool | None = None) -> None:
        self.as_root = os.geteuid() == 0 if as_root is None else as_root

    def argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.as_root else ["sudo", "-n", "--", *argv]

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        result = run(self.argv(argv), check=False, timeout=120)
        return result.returncode, result.stdout or ""

    def check_sudo(self) -> None:
        if self.as_root:
            return
        if shutil.which("sudo") is None or run(["sudo", "-n", "true"], check=False).returncode:
            raise CcloudvmError(
                "bare-metal clusters need root, and passwordless sudo is not set up",
                hint="run as root, or allow it with visudo: 'USER ALL=(ALL) NOPASSWD: ALL'",
            )


class NamespaceTarget:
    """A Target whose commands run in a network namespace of this host (same filesystem)."""

    def __init__(self, netns: str, inner: LocalTarget | None = None) -> None:
        self.name = netns
        self.netns = netns
        self.inner = inner or LocalTarget(netns)

    def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        output: OutputSink | None = None,
        sudo: bool = False,
        timeout: float | None = None,
    ) -> int:
        wrapped = ["nsenter", f"--net={NETNS_DIR / self.netns}", "--", *argv]
        # Entering a namespace needs root whatever the command asks for.
        return self.inner.run(wrapped, env=env, output=output, sudo=True, timeout=timeout)

    def put_file(self, local: Path, remote: str, *, mode: int = 0o644) -> None:
        self.inner.put_file(local, remote, mode=mode)

    def put_text(self, text: str, remote: str, *, mode: int = 0o644) -> None:
        self.inner.put_text(text, remote, mode=mode)


def host_addresses(runner: HostRunner) -> list[tuple[str, ipaddress.IPv4Interface]]:
    """(link, address) of every IPv4 address in the host's own namespace."""
    status, output = runner(["ip", "-o", "-4", "addr", "show"])
    if status != 0:
        raise CcloudvmError(f"cannot list the host's addresses: {output.strip()}")
    found = []
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == "inet":
            found.append((words[1].split("@")[0], ipaddress.IPv4Interface(words[3])))
    return found


def _which(name: str, as_root: bool) -> str | None:
    path = os.environ.get("PATH", "")
    if not as_root:
        path += ":/usr/sbin:/sbin"  # sudo's secure_path has them, a user's PATH may not
    return shutil.which(name, path=path)


class BareMetalCluster:
    """One workload's cluster on this host."""

    def __init__(self, name: str, state: StateDir, runner: HostRunner | None = None) -> None:
        self.name = check_cluster_name(name)
        self.netns = netns_name(name)
        self.dir = clusters_dir(state) / name
        self.runner = runner or HostRunner()
        self.host_journal = Journal(self.dir / "host.journal")
        self.script_journal = Journal(self.dir / "journal")
        self.veth = veth_plan(name)

    # -- state

    def saved_mode(self) -> bool | None:
        """True: isolated, False: host namespace, None: not set up."""
        try:
            text = (self.dir / "mode").read_text().strip()
        except OSError:
            return None
        return text != "host"

    def is_set_up(self) -> bool:
        return self.dir.is_dir() and (self.saved_mode() is not None or self.host_journal.exists())

    def netns_exists(self) -> bool:
        return (NETNS_DIR / self.netns).exists()

    def target(self, isolate: bool) -> NamespaceTarget | LocalTarget:
        return NamespaceTarget(self.netns) if isolate else LocalTarget("localhost")

    # -- checks made before anything changes

    def preflight(self, network: ClusterNetwork, isolate: bool) -> None:
        self.runner.check_sudo()
        needed = ["bash", "ip", "dnsmasq"] + (["nsenter"] if isolate else [])
        for tool in needed:
            if _which(tool, self.runner.as_root) is None:
                package = PACKAGE_OF.get(tool, "util-linux" if tool == "nsenter" else tool)
                raise ToolMissingError(
                    f"{tool} is not installed; the cluster network needs it",
                    hint=f"sudo apt-get install {package}",
                )
        ours = network.macvlan if self.script_journal.has("link", network.macvlan) else None
        for link, address in host_addresses(self.runner):
            if link != ours and address.ip in network.network:
                raise UsageError(
                    f"the cluster subnet {network.network} is already used on this host "
                    f"({address} on {link})",
                    hint="remove that address, or set another gateway/prefix in the "
                    "workload's cluster network",
                )

    # -- the namespace

    def _must(self, argv: Sequence[str]) -> None:
        status, output = self.runner(argv)
        if status != 0:
            raise CcloudvmError(f"{' '.join(argv)} failed: {output.strip()}")

    def up(self, isolate: bool) -> None:
        """Create the state folder and (isolated) the namespace; idempotent, journaled."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        (self.dir / "mode").write_text("isolated\n" if isolate else "host\n")
        if not isolate:
            return
        v = self.veth
        if not self.netns_exists():
            self.host_journal.record("netns", self.netns)
            self._must(["ip", "netns", "add", self.netns])
        elif not self.host_journal.has("netns", self.netns):
            raise StateError(
                f"network namespace {self.netns} exists but was not made by ccloudvm",
                hint=f"remove it with 'sudo ip netns del {self.netns}'",
            )
        inside = ["ip", "-n", self.netns]
        self._must([*inside, "link", "set", "lo", "up"])
        if self.runner(["ip", "link", "show", "dev", v.host])[0] != 0:
            self.host_journal.record("link", v.host)
            self._must(
                ["ip", "link", "add", v.host, "type", "veth", "peer", "name", v.inner]
                + ["netns", self.netns]
            )
        # No IPv6 link-local address either (and so no fe80::/64 route on the host); a
        # host without IPv6 refuses the setting and needs none.
        self.runner(["ip", "link", "set", v.host, "addrgenmode", "none"])
        self._must(["ip", "link", "set", v.host, "up"])
        self._must([*inside, "link", "set", v.inner, "up"])

    def down(self) -> list[str]:
        """Undo the host journal (the namespace and veth go, and what ran inside)."""
        return _undo(self.host_journal, self.runner, None)

    def remove_state(self) -> None:
        if self.dir.exists():
            self._must(["rm", "-rf", "--", str(self.dir)])


def run_baremetal(
    name: str,
    scripts: Mapping[str, str],
    action: str,
    *,
    state: StateDir | None = None,
    network: Mapping[str, Any] | None = None,
    isolate: bool | None = None,
    workload: str | None = None,
    runner: HostRunner | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    echo: OutputSink | None = None,
) -> ClusterResult:
    """`ccloudvm baremetal ACTION WORKLOAD`: run a cluster script on this host.

    `isolate` None means: as set up before, else isolated. Script failures are in the
    result; bad input and host problems raise CcloudvmError subclasses before anything
    changes.
    """
    label = workload or name
    script_for(scripts, action, label)
    net = ClusterNetwork.from_mapping(network)
    cluster = BareMetalCluster(name, state or StateDir.from_env(), runner)
    cluster.runner.check_sudo()
    saved = cluster.saved_mode()
    if action == "cleanup":
        return _cleanup(cluster, scripts, network, label, timeout, echo)
    if action == "setup":
        if saved is not None and isolate is not None and saved != isolate:
            where = "in its own namespace" if saved else "in the host namespace"
            raise StateError(
                f"cluster {name} is already set up {where}",
                hint=f"run 'ccloudvm baremetal cleanup {label}' first to change that",
            )
        mode = saved if saved is not None else (True if isolate is None else isolate)
        cluster.preflight(net, mode)
        # The scripts' own checks (their tools, ciao's programs, the subnet), in the host
        # namespace where nothing of the cluster exists yet: nothing changes if they fail.
        check_setup(
            LocalTarget("localhost"), scripts, cluster_name=name, state_dir=str(cluster.dir),
            network=network, workload=label,
        )  # fmt: skip
        if saved is not None:
            ui.info(f"cluster {name} is already set up; setting it up again changes nothing")
        cluster.up(mode)
    else:
        if saved is None:
            raise StateError(
                f"cluster {name} is not set up on this host",
                hint=f"run 'ccloudvm baremetal setup {label}' first",
            )
        mode = saved
        if mode and not cluster.netns_exists():
            raise StateError(
                f"the namespace {cluster.netns} of cluster {name} is gone (host rebooted?)",
                hint=f"run 'ccloudvm baremetal cleanup {label}' and set it up again",
            )
    result = run_cluster_action(
        cluster.target(mode),
        scripts,
        action,
        cluster_name=name,
        state_dir=str(cluster.dir),
        network=network,
        workload=label,
        timeout=timeout,
        log_path=cluster.dir / f"{action}.log",
        echo=echo,
    )
    if action == "setup" and saved is None and not result.ok:
        _roll_back(cluster)
    return result


def _roll_back(cluster: BareMetalCluster) -> None:
    """A first setup whose scripts failed before recording any change: take the namespace
    and state away again, so the host is as it was (else cleanup undoes the rest)."""
    if cluster.script_journal.exists():
        ui.info(f"run 'ccloudvm baremetal cleanup' to undo what setup of {cluster.name} made")
        return
    problems = cluster.down()
    if problems:
        ui.warn(f"could not remove namespace {cluster.netns} again: {problems[0]}")
        return
    cluster.remove_state()
    ui.info(f"setup of cluster {cluster.name} changed nothing: namespace and state removed again")


def _cleanup(
    cluster: BareMetalCluster,
    scripts: Mapping[str, str],
    network: Mapping[str, Any] | None,
    label: str,
    timeout: float | None,
    echo: OutputSink | None,
) -> ClusterResult:
    if not cluster.is_set_up():
        ui.info(f"nothing to clean up: cluster {cluster.name} is not set up on this host")
        return ClusterResult("cleanup")
    isolate = cluster.saved_mode() is not False
    result = ClusterResult("cleanup")
    if cluster.script_journal.exists() and (cluster.netns_exists() or not isolate):
        result = run_cluster_action(
            cluster.target(isolate),
            scripts,
            "cleanup",
            cluster_name=cluster.name,
            state_dir=str(cluster.dir),
            network=network,
            workload=label,
            timeout=timeout,
            echo=echo,
            summary=False,
        )
    problems: list[str] = []
    if cluster.script_journal.exists():
        # The script could not finish (or never ran): undo what outlives the namespace.
        with ui.step("undoing what the cluster scripts left behind"):
            kinds = GLOBAL_KINDS if isolate else None
            problems += _undo(cluster.script_journal, cluster.runner, kinds)
    if cluster.host_journal.exists():
        with ui.step(f"removing namespace {cluster.netns}"):
            problems += cluster.down()
    if problems:
        raise CcloudvmError(
            f"cleanup of cluster {cluster.name} left {len(problems)} change(s): {problems[0]}",
            hint=f"see {cluster.dir}; run cleanup again after fixing it",
        )
    cluster.remove_state()
    result.status = 0
    where = f"namespace {cluster.netns} removed" if isolate else "host namespace restored"
    ui.info(f"cluster {cluster.name} is cleaned up ({where})")
    return result


def _undo(journal: Journal, runner: HostRunner, kinds: Sequence[str] | None) -> list[str]:
    """Undo a journal; a journal that cannot be rewritten is a problem, never ignored."""
    try:
        return journal.undo(runner, kinds=kinds)
    except JournalError as exc:
        return [str(exc)]
