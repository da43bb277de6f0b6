"""Commands about workloads: list them, show one fully rendered, provision, verify."""

from __future__ import annotations

import sys

import click

from ccloudvm.cli import completion
from ccloudvm.core import ui
from ccloudvm.state.paths import StateDir


@click.command("workloads")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def workloads_command(as_json: bool) -> None:
    """List the workloads 'ccloudvm create' knows by name, with a line about each.

    Yours (~/.ccloudvm/workloads) come first and override bundled ones of the same name.
    """
    from ccloudvm.workloads.definition import list_workloads

    rows = list_workloads(StateDir.from_env())
    if as_json:
        import json

        click.echo(
            json.dumps([{"name": n, "description": d, "origin": o} for n, d, o in rows], indent=2)
        )
        return
    width = max((len(n) for n, _, _ in rows), default=4)
    for name, description, origin in rows:
        ui.out.print(
            f"{ui.escape(name):{width}}  {ui.escape(description)}  [dim]({ui.escape(origin)})[/dim]",
            highlight=False,
        )


@click.group("workload")
def workload_group() -> None:
    """Inspect one workload."""


@workload_group.command("show")
@click.argument("workload", shell_complete=completion.complete_workloads)
@click.option(
    "--name",
    default="example",
    show_default=True,
    help="Instance name to render the templates for.",
)
def show(workload: str, name: str) -> None:
    """Print WORKLOAD fully merged (inheritance) and rendered (templates), as it would run."""
    from ccloudvm.app import workflow
    from ccloudvm.workloads.definition import render_workload_yaml

    rendered = workflow.resolve(StateDir.from_env(), workload, name)
    click.echo(render_workload_yaml(rendered), nl=False)


@workload_group.command("schema")
def schema() -> None:
    """Print the JSON Schema of a workload file (docs/workload.schema.json), for editors
    (yaml-language-server) and validators such as check-jsonschema."""
    from ccloudvm.workloads.model import json_schema

    click.echo(json_schema(), nl=False)


@click.command("provision")
@click.argument("name", shell_complete=completion.complete_instances)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Print the steps' output as it comes (it is always kept in provision.log).",
)
def provision_command(name: str, verbose: bool) -> None:
    """Run the workload's provision steps in instance NAME again (they are idempotent).

    Their output is appended to the instance's provision.log: 'ccloudvm logs NAME
    --provision'.
    """
    from ccloudvm.app import workflow

    state = StateDir.from_env()
    workload = workflow.workload_of(state, name)
    workflow.provision_instance(state, name, workload, verbose=verbose)


@click.command("verify")
@click.argument("name", shell_complete=completion.complete_instances)
def verify_command(name: str) -> None:
    """Run the workload's checks (its release criterion) in NAME: each PASS or FAIL (with
    its output), then 'N passed, N failed'; exit status 1 if any fails."""
    from ccloudvm.app import workflow

    _, failed = workflow.verify(StateDir.from_env(), name)
    sys.exit(1 if failed else 0)


commands = [workloads_command, workload_group, provision_command, verify_command]
