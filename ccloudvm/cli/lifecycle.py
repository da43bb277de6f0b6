"""Commands that boot, stop and remove instances: start, restart, stop, quit, delete,
teardown. Those that take several names act on each; one failure does not stop the others."""

from __future__ import annotations

import os
import sys

import click

from ccloudvm.cli import completion
from ccloudvm.cli.options import NAMES, all_option, resize_options
from ccloudvm.cli.targets import each, pick_instance, state_dir, targets_of
from ccloudvm.core import defaults, ui
from ccloudvm.core.errors import UsageError


@click.command()
@NAMES
@all_option("Boot")
@click.option("--timeout", type=float, default=defaults.BOOT_TIMEOUT, show_default=True)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    help="Accelerator for this and later boots (default: what create chose, or $CCLOUDVM_ACCEL).",
)
@resize_options
def start(
    names: tuple[str, ...], every: bool, timeout: float, accel: str | None, mem: int | None,
    cpus: int | None, disk: int | None,
) -> None:  # fmt: skip
    """Boot stopped instances (also recovers one whose QEMU died), one after the other.
    --mem, --cpus and --disk resize them first, for this and later boots (a disk only grows).

    Without NAME: the only instance there is. One that fails to boot does not stop the
    others; the exit status is non-zero if any failed.
    """
    from ccloudvm.instance import lifecycle as instance
    from ccloudvm.vm import accel as accel_mod

    chosen = accel or os.environ.get(accel_mod.ENV_ACCEL)
    mode = accel_mod.requested_mode(chosen) if chosen else None
    resize = instance.Resize(mem_mib=mem, cpus=cpus, disk_gib=disk)
    state = state_dir()
    each(
        targets_of(names, every),
        lambda name: instance.start(state, name, timeout, accel_mode=mode, resize=resize),
    )


@click.command()
@click.argument("name", required=False, shell_complete=completion.complete_instances)
@click.option("--timeout", type=float, default=defaults.BOOT_TIMEOUT, show_default=True)
@resize_options
def restart(
    name: str | None, timeout: float, mem: int | None, cpus: int | None, disk: int | None
) -> None:
    """Stop the instance politely and start it again; --mem, --cpus and --disk resize it
    in between (kept for later boots; a disk only grows)."""
    from ccloudvm.instance import lifecycle as instance

    resize = instance.Resize(mem_mib=mem, cpus=cpus, disk_gib=disk)
    instance.restart(state_dir(), pick_instance(name), timeout, resize=resize)


@click.command()
@NAMES
@all_option("Stop")
@click.option(
    "--timeout",
    type=float,
    default=defaults.STOP_TIMEOUT,
    show_default=True,
    help="Seconds to wait for each guest to power off before its QEMU is quit.",
)
def stop(names: tuple[str, ...], every: bool, timeout: float) -> None:
    """Shut instances down cleanly (ACPI power-off, then quit QEMU if it hangs).

    Without NAME: the only instance there is. A failure on one does not stop the others;
    the exit status is non-zero if any failed.
    """
    from ccloudvm.instance import lifecycle as instance

    state = state_dir()
    each(targets_of(names, every), lambda name: instance.stop(state, name, timeout))


@click.command("quit")
@NAMES
@all_option("Quit")
def quit_command(names: tuple[str, ...], every: bool) -> None:
    """Stop instances' QEMU at once (like pulling the plug).

    Without NAME: the only instance there is. A failure on one does not stop the others;
    the exit status is non-zero if any failed.
    """
    from ccloudvm.instance import lifecycle as instance

    state = state_dir()
    each(targets_of(names, every), lambda name: instance.quit_instance(state, name))


def _confirm_deletion(names: list[str], yes: bool, command: str) -> None:
    """Every instance goes only with --yes, or when the user says so at a terminal."""
    if yes:
        return
    listed = ", ".join(names)
    if not sys.stdin.isatty():
        raise UsageError(
            f"{command} would delete {len(names)} instance(s): {listed}",
            hint="add --yes to confirm",
        )
    click.confirm(f"Delete {len(names)} instance(s): {listed}?", abort=True)


@click.command()
@NAMES
@all_option("Delete")
@click.option("--yes", is_flag=True, help="With --all: do not ask for confirmation.")
def delete(names: tuple[str, ...], every: bool, yes: bool) -> None:
    """Delete instances: their QEMU, disk, keys and logs. Their images stay cached.

    NAME is required (several may be given); --all deletes every instance, as teardown
    does, and asks first unless --yes. A failure on one does not stop the others; the
    exit status is non-zero if any failed.
    """
    from ccloudvm.instance import lifecycle as instance

    state = state_dir()
    targets = targets_of(names, every, pick=False)
    if every:
        if not targets:
            ui.info("no instances")
            return
        _confirm_deletion(targets, yes, "delete --all")
    each(targets, lambda name: instance.delete(state, name))


@click.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def teardown(yes: bool) -> None:
    """Delete every instance (the same as 'delete --all')."""
    from ccloudvm.instance import lifecycle as instance
    from ccloudvm.state.instance_state import instance_names

    state = state_dir()
    names = instance_names(state)
    if not names:
        ui.info("no instances")
        return
    _confirm_deletion(names, yes, "teardown")
    each(names, lambda name: instance.delete(state, name))


commands = [start, restart, stop, quit_command, delete, teardown]
