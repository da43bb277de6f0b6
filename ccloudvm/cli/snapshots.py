"""Commands about an instance's saved states: snapshot save|restore|list|rm, suspend,
resume."""

from __future__ import annotations

import time

import click

from ccloudvm.core import ui
from ccloudvm.state.paths import StateDir


@click.group("snapshot")
def snapshot_group() -> None:
    """Save an instance's state under a name and return to it later.

    \b
    A snapshot of a running instance keeps its memory and disk: a restore returns to
    that running instant in seconds. One of a stopped instance keeps the disk only.
    Snapshots live in the instance's folder and are deleted with it.
    """


@snapshot_group.command("save")
@click.argument("name")
@click.argument("snap", required=False)
def snapshot_save(name: str, snap: str | None) -> None:
    """Snapshot instance NAME as SNAP (default: snap-DATE-TIME)."""
    from ccloudvm.instance import snapshots

    snapshots.save(StateDir.from_env(), name, snap)


@snapshot_group.command("restore")
@click.argument("name")
@click.argument("snap", required=False)
def snapshot_restore(name: str, snap: str | None) -> None:
    """Return instance NAME to snapshot SNAP (default: the newest).

    What ran since is lost. A memory snapshot runs again from its instant (its 9p shares
    mounted again, showing the host folders as they are now; forwarded ports as now
    recorded); a disk-only one needs the instance stopped and leaves it stopped.
    """
    from ccloudvm.instance import snapshots

    snapshots.restore(StateDir.from_env(), name, snap)


@snapshot_group.command("list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def snapshot_list(name: str, as_json: bool) -> None:
    """List instance NAME's snapshots, oldest first."""
    import json

    from ccloudvm.instance import snapshots

    rows = snapshots.list_snapshots(StateDir.from_env(), name)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        ui.info(f"{name} has no snapshots ('ccloudvm snapshot save {name} SNAP' makes one)")
        return
    from rich.table import Table

    table = Table(box=None)
    for column in ("SNAPSHOT", "KEEPS", "CREATED", "MEMORY"):
        table.add_column(column)
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))
        memory = f"{r['state_mib']} MiB" if r["state_mib"] else "-"
        table.add_row(r["name"], r["kind"], created, memory)
    ui.out.print(table)


@snapshot_group.command("rm")
@click.argument("name")
@click.argument("snap")
def snapshot_rm(name: str, snap: str) -> None:
    """Remove snapshot SNAP of instance NAME."""
    from ccloudvm.instance import snapshots

    snapshots.remove(StateDir.from_env(), name, snap)


@click.command("suspend")
@click.argument("name")
def suspend_command(name: str) -> None:
    """Save a running instance's state to disk and stop its QEMU (no CPU or memory used).

    'ccloudvm resume NAME' (or 'start') continues it where it was; 'stop' discards the
    saved state.
    """
    from ccloudvm.instance import suspend

    suspend.suspend(StateDir.from_env(), name)


@click.command("resume")
@click.argument("name")
def resume_command(name: str) -> None:
    """Continue a suspended instance where it was (clock set, shares mounted again)."""
    from ccloudvm.instance import suspend

    suspend.resume(StateDir.from_env(), name)


commands = [snapshot_group, suspend_command, resume_command]
