"""`ccloudvm logs`: the serial console (followed with -f), cloud-init's output log from
the guest, or the provision steps' output."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ccloudvm.cli import completion
from ccloudvm.cli.targets import pick_instance, state_dir
from ccloudvm.core.errors import CcloudvmError, UsageError

if TYPE_CHECKING:
    from ccloudvm.state.paths import StateDir


@click.command()
@click.argument("name", required=False, shell_complete=completion.complete_instances)
@click.option(
    "--cloud-init",
    "cloud_init",
    is_flag=True,
    help="Show /var/log/cloud-init-output.log from the guest instead of the console.",
)
@click.option(
    "--provision",
    "provision_log",
    is_flag=True,
    help="Show the output of every provision run (create, provision) instead of the console.",
)
@click.option("-n", "--lines", type=int, default=0, help="Only the last N lines.")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing the console as it grows, from a create's first second (while it "
    "fetches its image the console is still empty), until the VM stops or Ctrl-C.",
)
def logs(name: str | None, cloud_init: bool, provision_log: bool, lines: int, follow: bool) -> None:
    """Show the serial console log (or cloud-init's output log from the guest, or the
    provision steps' output)."""
    from ccloudvm.instance import access

    state = state_dir()
    name = pick_instance(name)
    if cloud_init and provision_log:
        raise UsageError("--cloud-init and --provision show different logs; give one")
    if follow and (cloud_init or provision_log):
        raise UsageError("--follow follows the console only", hint="leave out --follow")
    if provision_log:
        from ccloudvm.app import workflow
        from ccloudvm.state.instance_state import load_state

        load_state(state, name)
        path = workflow.provision_log(state, name)
        if not path.exists():
            raise UsageError(
                f"{name!r} has no provision log yet: its workload's steps have not run",
                hint=f"run them with 'ccloudvm provision {name}'",
            )
        text = path.read_text(errors="replace")
    elif cloud_init:
        with access.connect_target(state, name) as target:
            code, text = target.run_capture(["cat", "/var/log/cloud-init-output.log"], sudo=True)
        if code != 0:
            raise CcloudvmError(
                f"could not read cloud-init-output.log in {name!r}: {text.strip()[-200:]}"
            )
    else:
        from ccloudvm.state.instance_state import creation, files_of, load_state

        files = files_of(state, name)
        if creation(files) is None:
            load_state(state, name)  # a missing instance fails here
        path = files.serial
        raw = path.read_bytes() if path.exists() else b""
        text = raw.decode(errors="replace")
        if follow:
            _follow(state, name, text, len(raw), lines)
            return
    if lines:
        text = "\n".join(text.splitlines()[-lines:]) + "\n"
    click.echo(text, nl=False)


def _follow(state: StateDir, name: str, text: str, offset: int, lines: int) -> None:
    """Print the console's last `lines` (all when 0), then what comes, until the VM stops."""
    from ccloudvm.core import logfollow
    from ccloudvm.core import pids as process
    from ccloudvm.state.instance_state import creation, files_of, load_state
    from ccloudvm.vm import drivers

    files = files_of(state, name)
    inst = load_state(state, name) if files.state.exists() else None
    # One driver, one connection to that host for the whole follow (not one a poll).
    remote = None
    if inst is not None and drivers.is_remote(inst):
        from ccloudvm.vm.libvirt_driver import LibvirtDriver

        remote = LibvirtDriver(files, inst)
        remote.tap_console()  # its console is a pty on that host: copied here while we follow

    def going() -> bool:
        if remote is not None:
            return remote.is_running()
        return creation(files) == "creating" or (
            process.running_pid(files.pidfile, files.dir) is not None
        )

    if lines:
        text = "\n".join(text.splitlines()[-lines:]) + "\n"
    click.echo(text, nl=False)
    logfollow.follow(files.serial, offset, going)


commands = [logs]
