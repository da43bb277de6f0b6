"""What instances there are and how they are: `ccloudvm instances` (ls, list) and `status`.
Both only read the state directory and ask QEMU; they load no heavy library, and what they
need only when they run (so that --help does not)."""

from __future__ import annotations

import click

from ccloudvm.cli import completion
from ccloudvm.cli.options import format_options
from ccloudvm.cli.targets import pick_instance, state_dir
from ccloudvm.core import formats, ui
from ccloudvm.core.errors import CcloudvmError, UsageError

_INSTANCE_COLUMNS: list[formats.Column] = [
    ("NAME", lambda r: r["name"]),
    ("STATE", lambda r: r["state"]),
    ("WORKLOAD", lambda r: r["workload"]),
    ("IMAGE", lambda r: r["image"]),
    ("CPUS", lambda r: r["cpus"]),
    ("MEM", lambda r: f"{r['mem_mib']} MiB"),
    ("SSH", lambda r: r["ssh"]),
    ("PORTS", lambda r: r["ports"]),
    ("DRIVER", lambda r: _driver_cell(r["driver"])),
]


@click.command("instances")
@format_options
@click.option("-q", "--quiet", is_flag=True, help="Print only the names, one a line.")
def instances_command(fmt: str | None, as_json: bool, quiet: bool) -> None:
    """List instances with their state and how to reach them (aliases: ls, list).

    STATE: running, stopped, crashed (QEMU died though nobody stopped it), creating (a
    create is at work, from its image download on), failed (a create ended without a
    ready guest: 'ccloudvm logs NAME' shows why, 'ccloudvm delete NAME' removes it),
    suspended ('ccloudvm resume NAME' continues it).
    CSV has every field of --format json, a list's items joined by '; '.
    """
    from ccloudvm.instance.status import status as status_of
    from ccloudvm.state.instance_state import creating_names, instance_names, linked_entries

    chosen = formats.choose(fmt, as_json)
    if quiet and (fmt or as_json):
        raise UsageError("-q prints names only; it takes no --format or --json")
    state = state_dir()
    names = sorted({*instance_names(state), *creating_names(state)})
    if quiet:  # no QEMU asked: fast enough for shell completion and scripts
        for name in names:
            click.echo(name)
        return
    for problem in linked_entries(state):  # left out, never followed: named
        ui.warn(problem)
    rows = []
    for name in names:
        try:
            rows.append(status_of(state, name).as_dict())
        except CcloudvmError as exc:  # one damaged instance must not hide the others
            ui.warn(str(exc))
    if not rows and chosen == "table":
        ui.info("no instances (create one with 'ccloudvm create debian')")
        return
    click.echo(formats.render_list(rows, chosen, _INSTANCE_COLUMNS), nl=False)


def _driver_cell(driver: str) -> str:
    """'qemu', or 'libvirt' and where its domain runs: 'libvirt (local)', 'libvirt@HOST'."""
    kind, _, uri = driver.partition(" ")
    if kind != "libvirt":
        return kind
    from urllib.parse import urlsplit

    host = urlsplit(uri).hostname
    return f"libvirt@{host}" if host else "libvirt (local)"


@click.command()
@click.argument("name", required=False, shell_complete=completion.complete_instances)
@format_options
def status(name: str | None, fmt: str | None, as_json: bool) -> None:
    """Show one instance's state (from QEMU itself) and settings."""
    from ccloudvm.instance.status import status as status_of

    chosen = formats.choose(fmt, as_json)
    data = status_of(state_dir(), pick_instance(name)).as_dict()
    click.echo(formats.render_record(data, chosen), nl=False)
    if chosen == "table" and data["state"] == "crashed":
        ui.warn(
            f"QEMU is gone although nobody stopped it; 'ccloudvm start {data['name']}' boots it again"
        )


commands = [instances_command, status]
