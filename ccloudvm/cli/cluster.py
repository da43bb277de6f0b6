"""The cluster in a machine: `ccloudvm cluster ACTION [INSTANCE]` inside a VM, and
`ccloudvm baremetal ACTION WORKLOAD` on this host. Both run the workload's same scripts."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ccloudvm.cli import completion
from ccloudvm.cli.targets import pick_instance
from ccloudvm.state.paths import StateDir

if TYPE_CHECKING:
    from ccloudvm.cluster.network import ClusterResult

# One per cluster action (ccloudvm.cluster.network.ACTIONS, in its order; a test keeps
# them the same), so that the commands are made without importing the cluster code.
_ACTION_HELP = {
    "setup": "Bring the workload's cluster up (idempotent; every change is journaled first).",
    "verify": "The quick end-to-end check; ends with 'N passed, N failed', exit status 1 on failure.",
    "bat": "The acceptance tests; ends with 'N passed, N failed', exit status 1 on failure.",
    "cleanup": "Undo everything setup made, from its journal (also after a crash half-way).",
    "env": "Print the cluster's environment file (for 'eval' or 'source').",
}


def _exit(result: ClusterResult) -> None:
    sys.exit(0 if result.ok else 1)


@click.group("cluster")
def cluster_group() -> None:
    """Run the workload's cluster inside an instance (setup, verify, bat, cleanup, env)."""


def _vm_action(action: str) -> click.Command:
    @click.argument("name", required=False, shell_complete=completion.complete_instances)
    @click.option("-v", "--verbose", is_flag=True, help="Show the scripts' output as it comes.")
    def command(name: str | None, verbose: bool) -> None:
        from ccloudvm.app import workflow
        from ccloudvm.cluster import network as cluster
        from ccloudvm.instance import access

        state = StateDir.from_env()
        name = pick_instance(name)
        workload = workflow.workload_of(state, name)
        cluster.script_for(workload.cluster, action, workload.name)
        with access.connect_target(state, name) as target:
            result = cluster.run_cluster_action(
                target, workload.cluster, action,
                cluster_name=name, state_dir=cluster.GUEST_STATE_DIR.format(name=name),
                network=workload.cluster_network, nat=True, workload=workload.name,
                echo=(lambda line: click.echo(line, err=True)) if verbose else None,
            )  # fmt: skip
        _exit(result)

    command.__doc__ = _ACTION_HELP[action] + " Runs inside instance NAME (default: the only one)."
    return click.command(action)(command)


@click.group("baremetal")
def baremetal_group() -> None:
    """Run a workload on this host: its cluster in a network namespace of its own, so the
    host's links, routes and firewall stay untouched (setup --no-isolation: in the host's),
    or its provision steps (provision), the very steps a VM of it gets."""


def _host_action(action: str) -> click.Command:
    @click.argument("workload", shell_complete=completion.complete_workloads)
    @click.option("--name", help="Cluster name (default: the workload's name).")
    @click.option("-v", "--verbose", is_flag=True, help="Show the scripts' output as it comes.")
    def command(workload: str, name: str | None, verbose: bool, no_isolation: bool = False) -> None:
        from ccloudvm.app import workflow
        from ccloudvm.cluster import baremetal as netns

        state = StateDir.from_env()
        rendered = workflow.resolve(state, workload, name or "baremetal", bare_metal=True)
        result = netns.run_baremetal(
            name or rendered.name, rendered.cluster, action, state=state,
            network=rendered.cluster_network, isolate=False if no_isolation else None,
            workload=workload, echo=(lambda line: click.echo(line, err=True)) if verbose else None,
        )  # fmt: skip
        _exit(result)

    command.__doc__ = _ACTION_HELP[action] + " Runs on this host."
    if action == "setup":
        # The mode is chosen at setup; the other commands follow the running cluster's.
        command = click.option(
            "--no-isolation",
            is_flag=True,
            help="Use the host's network namespace; the links, rules and sysctl it changes "
            "are journaled and removed by cleanup.",
        )(command)
    return click.command(action)(command)


for _action in _ACTION_HELP:
    cluster_group.add_command(_vm_action(_action))
    baremetal_group.add_command(_host_action(_action))


@baremetal_group.command("provision")
@click.argument("workload", shell_complete=completion.complete_workloads)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation: this changes this host.")
@click.option("-v", "--verbose", is_flag=True, help="Show the steps' output as it comes.")
def baremetal_provision(workload: str, yes: bool, verbose: bool) -> None:
    """Run WORKLOAD's provision steps on this host, the very steps a VM of it gets
    (`only: vm` steps skipped), as you; `sudo: true` steps as root through sudo -n.
    Asks first unless --yes; see them with 'ccloudvm workload show WORKLOAD'."""
    from ccloudvm.app import workflow

    workflow.baremetal_provision(
        StateDir.from_env(), workload, yes=yes, verbose=verbose,
        confirm=lambda question: click.confirm(question, default=False, err=True),
    )  # fmt: skip


commands = [cluster_group, baremetal_group]
