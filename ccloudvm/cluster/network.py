"""Run a workload's cluster scripts (setup, verify, bat, cleanup, env) on any Target.

The scripts are rendered by the workload; this module hands them to a target (a VM over
SSH, this host, or a network namespace on it) with the cluster's name, state directory
and network parameters in the environment, and turns the scripts' output protocol into
progress lines and a result:

    STEP: text      a step starts; it ends OK when the next starts or the script succeeds
    PASS: name      a check passed            FAIL: name      a check failed
    ERROR: text     the one-line reason the script stopped
    DONE: text      the one-line summary of a script that succeeded

Every action ends with a one-line summary: verify and bat with `N passed, N failed` on
stdout, the others with the script's DONE line (or a plain one) on stderr.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.remote.target import Target

ACTIONS = ("setup", "verify", "bat", "cleanup", "env")
CHECK_ACTIONS = ("verify", "bat")
DEFAULT_TIMEOUT = 1800.0
LABEL = "cluster network"  # what its problems are about, in messages  # the ciao setup builds and boots things; the test cluster takes seconds

# Where the cluster keeps its journal and files inside a VM (scripts run as root there).
GUEST_STATE_DIR = "/var/lib/ccloudvm/clusters/{name}"

# A setup script that contains this line stops after its checks when
# CCLOUDVM_CLUSTER_CHECK_ONLY=1 (templates/cluster/network-setup.sh.j2 does), so its
# requirements can be checked before anything changes.
CHECK_ONLY_MARKER = "# ccloudvm: honours CCLOUDVM_CLUSTER_CHECK_ONLY"

# Crash injection for ccloudvm's own tests, never read from the environment: when a test
# sets it (in the process that runs the cluster), the scripts stop for an hour once the
# journal holds this many changes, so the test can kill setup at a known point. Every
# script run passes CCLOUDVM_TEST_PAUSE_AFTER_CHANGES explicitly (empty when unset), so
# a variable of that name in a user's environment has no effect.
TEST_PAUSE_AFTER_CHANGES: int | None = None

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,39}")


def check_cluster_name(name: str) -> str:
    """Cluster names become namespace and file names: letters, digits and dashes."""
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid cluster name {name!r}",
            hint="use up to 40 letters, digits and dashes, starting with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class ClusterNetwork:
    """The shared cluster network's parameters, validated."""

    bridge: str
    macvlan: str
    gateway: ipaddress.IPv4Address
    network: ipaddress.IPv4Network
    dhcp_start: ipaddress.IPv4Address
    dhcp_end: ipaddress.IPv4Address
    lease_time: str
    dns: bool
    external_interface: str

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> ClusterNetwork:
        """Defaults overridden by a workload's `cluster: network:` (its model,
        ccloudvm.workloads.model.Network, checks each value); every problem at once, as
        a UsageError."""
        from ccloudvm.core.config import ConfigError, Problem, check  # pydantic: off start-up
        from ccloudvm.workloads.model import Network

        given = check(Network, dict(values or {}), origin=LABEL, noun="cluster network parameter")
        gateway = ipaddress.IPv4Address(given.gateway)
        net = cls(
            bridge=given.bridge,
            macvlan=given.macvlan,
            gateway=gateway,
            network=ipaddress.IPv4Network(f"{gateway}/{given.prefix}", strict=False),
            dhcp_start=ipaddress.IPv4Address(given.dhcp_start),
            dhcp_end=ipaddress.IPv4Address(given.dhcp_end),
            lease_time=given.lease_time,
            dns=given.dns,
            external_interface=given.external_interface,
        )
        problems = net._problems()
        if problems:
            raise ConfigError(LABEL, [Problem((), None, text) for text in problems])
        return net

    def _problems(self) -> list[str]:
        """What is wrong between the parameters (each is fine on its own)."""
        net, gateway, start, end = self.network, self.gateway, self.dhcp_start, self.dhcp_end
        found = []
        if self.bridge == self.macvlan:
            found.append("bridge and macvlan must have different names")
        hosts = (net.network_address, net.broadcast_address)
        if gateway in hosts:
            found.append(f"gateway {gateway} is not a host address of {net}")
        if start not in net or end not in net or start > end or start in hosts or end in hosts:
            found.append(
                f"DHCP range {start}-{end} must be an ascending range of host addresses in {net}"
            )
        elif start <= gateway <= end:
            found.append(f"gateway {gateway} must lie outside the DHCP range")
        return found

    def as_env(self) -> dict[str, str]:
        """The environment the cluster scripts read their parameters from."""
        return {
            "CLUSTER_BRIDGE": self.bridge,
            "CLUSTER_MACVLAN": self.macvlan,
            "CLUSTER_GATEWAY": str(self.gateway),
            "CLUSTER_PREFIX": str(self.network.prefixlen),
            "CLUSTER_SUBNET": str(self.network),
            "CLUSTER_DHCP_START": str(self.dhcp_start),
            "CLUSTER_DHCP_END": str(self.dhcp_end),
            "CLUSTER_LEASE_TIME": self.lease_time,
            "CLUSTER_DNS_PORT": "53" if self.dns else "0",
            "CLUSTER_EXTERNAL_INTERFACE": self.external_interface,
        }


@dataclass
class ClusterResult:
    action: str
    status: int = 0
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str | None = None  # the script's ERROR line, if it printed one
    done: str | None = None  # the script's DONE line, if it printed one
    lines: list[str] = field(default_factory=list)  # everything the script printed

    @property
    def ok(self) -> bool:
        return self.status == 0 and not self.failed

    @property
    def summary(self) -> str:
        return f"{len(self.passed)} passed, {len(self.failed)} failed"


class _Progress:
    """Turns the scripts' output protocol into `name ... OK/FAIL` lines as it arrives."""

    def __init__(self, result: ClusterResult, echo: Callable[[str], None] | None) -> None:
        self.result = result
        self.echo = echo
        self.current: AbstractContextManager[None] | None = None

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        self.result.lines.append(line)
        kind, _, text = line.partition(": ")
        if kind == "STEP" and text:
            self.close(ok=True)
            self.current = ui.step(text)
            self.current.__enter__()
        elif kind in ("PASS", "FAIL") and text:
            self.close(ok=True)
            (self.result.passed if kind == "PASS" else self.result.failed).append(text)
            mark = "[green]OK[/green]" if kind == "PASS" else "[red]FAIL[/red]"
            ui.console.print(f"{ui.escape(text)} ... {mark}")
        elif kind == "ERROR" and text:
            self.result.error = text
        elif kind == "DONE" and text:
            self.close(ok=True)
            self.result.done = text
        elif self.echo is not None:
            self.echo(line)

    def close(self, *, ok: bool) -> None:
        if self.current is None:
            return
        current, self.current = self.current, None
        if ok:
            current.__exit__(None, None, None)
        else:
            failure = CcloudvmError(self.result.error or "step failed")
            current.__exit__(CcloudvmError, failure, None)


def script_for(scripts: Mapping[str, str], action: str, workload: str) -> str:
    if action not in ACTIONS:
        raise UsageError(
            f"unknown cluster action {action!r}", hint=f"use one of {', '.join(ACTIONS)}"
        )
    if not scripts:
        raise UsageError(
            f"workload {workload} has no cluster section",
            hint="cluster commands need a workload with cluster: setup/verify/cleanup scripts",
        )
    script = scripts.get(action)
    if not script:
        raise UsageError(f"workload {workload} has no cluster {action} script")
    return script


def _script_env(
    cluster_name: str,
    state_dir: str,
    network: Mapping[str, Any] | None,
    nat: bool,
    *,
    check_only: bool = False,
) -> dict[str, str]:
    pause = TEST_PAUSE_AFTER_CHANGES
    return {
        "CLUSTER_NAME": cluster_name,
        "CLUSTER_STATE_DIR": state_dir,
        "CLUSTER_NAT": "1" if nat else "0",
        **ClusterNetwork.from_mapping(network).as_env(),
        "CCLOUDVM_CLUSTER_CHECK_ONLY": "1" if check_only else "0",
        "CCLOUDVM_TEST_PAUSE_AFTER_CHANGES": "" if pause is None else str(pause),
    }


def _argv(script: str, action: str) -> list[str]:
    return ["bash", "-eu", "-c", script, f"ccloudvm-cluster-{action}"]


def check_setup(
    target: Target,
    scripts: Mapping[str, str],
    *,
    cluster_name: str,
    state_dir: str,
    network: Mapping[str, Any] | None = None,
    nat: bool = False,
    workload: str | None = None,
    timeout: float | None = 120,
) -> bool:
    """Run the setup script's own checks (tools, root, subnet) on `target`, changing nothing.

    Only for a script that says it supports it (CHECK_ONLY_MARKER); returns whether the
    checks ran. A failed check raises CcloudvmError with the script's one-line reason.
    """
    check_cluster_name(cluster_name)
    script = script_for(scripts, "setup", workload or cluster_name)
    if CHECK_ONLY_MARKER not in script:
        return False
    lines: list[str] = []
    env = _script_env(cluster_name, state_dir, network, nat, check_only=True)
    status = target.run(
        _argv(script, "setup"), env=env, output=lines.append, sudo=True, timeout=timeout
    )
    if status != 0:
        errors = [line[len("ERROR: ") :] for line in lines if line.startswith("ERROR: ")]
        tail = lines[-1:] or [f"exit status {status}"]
        raise CcloudvmError(errors[-1] if errors else f"the setup checks failed: {tail[0]}")
    return True


def run_cluster_action(
    target: Target,
    scripts: Mapping[str, str],
    action: str,
    *,
    cluster_name: str,
    state_dir: str,
    network: Mapping[str, Any] | None = None,
    nat: bool = False,
    workload: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    log_path: Path | None = None,
    echo: Callable[[str], None] | None = None,
    summary: bool = True,
) -> ClusterResult:
    """Run the cluster's `action` script as root on `target` and report its steps.

    `scripts` maps action -> rendered script (Workload.cluster); `state_dir` is a path on
    the target; `nat` is true only inside a VM. Script failures come back in the result
    (`ok` false, `error` the script's reason); bad input raises UsageError. `echo`
    receives the script's other output lines (for --verbose); with `log_path` every line
    is also written there. The last line printed is the summary (`N passed, N failed`
    for verify and bat); `summary=False` leaves a successful setup/cleanup/env's summary
    to the caller (in `result.done`).
    """
    check_cluster_name(cluster_name)
    script = script_for(scripts, action, workload or cluster_name)
    env = _script_env(cluster_name, state_dir, network, nat)
    result = ClusterResult(action)
    if action == "env":
        # The environment file goes to stdout as it is, for `eval` or `source`.
        progress = _Progress(result, lambda line: ui.out.print(line, markup=False))
    else:
        progress = _Progress(result, echo)
    try:
        result.status = target.run(
            _argv(script, action), env=env, output=progress.feed, sudo=True, timeout=timeout
        )
    finally:
        progress.close(ok=result.status == 0)
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text("\n".join(result.lines) + "\n")
    if result.status != 0 and not result.failed:
        reason = result.error or f"the {action} script exited with status {result.status}"
        if result.error is None:
            for line in result.lines[-15:]:
                ui.console.print(f"  {line}", markup=False, style="dim")
        ui.console.print(f"[red]cluster {action} failed:[/red] {ui.escape(reason)}", soft_wrap=True)
    if action in CHECK_ACTIONS:
        ui.out.print(result.summary)
    elif result.status == 0:
        if result.done is None:
            result.done = _DONE.get(action, "{name}: {action} done").format(
                name=cluster_name, action=action
            )
        if summary:
            ui.console.print(result.done, markup=False)
    return result


_DONE = {
    "setup": "cluster {name} is set up",
    "cleanup": "cluster {name} is cleaned up",
    "env": "printed the environment of cluster {name}",
}
