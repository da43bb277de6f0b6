"""The command line: thin click commands over the library.

Every command catches CcloudvmError at the top (main) and prints one line: what went
wrong and what to do next. --debug shows tracebacks and every host command run.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import NoReturn

import click

from ccloudvm import __version__
from ccloudvm.cli import access, create, errors, host, instances, lifecycle, logs
from ccloudvm.cli import cluster as cli_cluster
from ccloudvm.cli import images as cli_images
from ccloudvm.cli import workloads as cli_workloads
from ccloudvm.cli.snapshots import commands as snapshot_commands
from ccloudvm.cli.targets import state_dir
from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError, CreateInterrupted
from ccloudvm.state.paths import refuse_root_in_foreign_state


class _Group(click.Group):
    """The top-level group: also knows commands by their aliases (`ls` for `instances`).

    Aliases are left out of --help's list and of completion; each command's help names its own.
    """

    aliases = {"ls": "instances", "list": "instances", "shell": "connect"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show host commands as they run and full tracebacks.")
@click.version_option(__version__, prog_name="ccloudvm")
@click.pass_context
def cli(context: click.Context, debug: bool) -> None:
    """ccloudvm: a development environment, or a whole cluster, inside one VM.

    \b
    Quick start:
      ccloudvm setup              check (and install) what the host needs
      ccloudvm create debian      build/download the image, boot a VM, provision it
      ccloudvm run NAME -- CMD    run a command in it
      ccloudvm connect NAME       open a shell in it

    State lives in ~/.ccloudvm (or $CCLOUDVM_HOME). Acceleration is chosen
    automatically (KVM when it really works, TCG otherwise); --accel or
    $CCLOUDVM_ACCEL override it.
    """
    import logging  # here, not at the top: --help never needs it

    errors.set_debug(debug)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s"
    )
    if not debug:
        # paramiko logs every failed connection attempt while a guest boots; that is expected.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    if context.invoked_subcommand not in _ROOT_MAY_RUN:
        refuse_root_in_foreign_state(state_dir())


# Commands that write nothing into the state directory (setup installs host packages).
_ROOT_MAY_RUN = {None, "setup", "version", "completion"}

# Every command lives in a module of its own, each module with one job.
for _module in (create, lifecycle, instances, access, logs, host):
    for _command in _module.commands:
        cli.add_command(_command)
for _command in (*cli_workloads.commands, *cli_images.commands, *cli_cluster.commands):
    cli.add_command(_command)
for _command in snapshot_commands:
    cli.add_command(_command)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a dead terminal), raised like ^C so clean-ups run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.exit_code = 128 + signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def _install_signal_handlers() -> None:
    import signal

    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            signal.signal(signum, _raise_terminated)


def main(argv: list[str] | None = None) -> None:
    _install_signal_handlers()
    try:
        cli.main(args=argv, prog_name="ccloudvm", standalone_mode=False)
    except click.exceptions.Abort as exc:
        # click turns a ^C (or SIGTERM, SIGHUP) met inside a command into Abort.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            _interrupted(exc.__cause__)
        ui.console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CcloudvmError as exc:
        if errors.debugging():
            raise
        from ccloudvm.core import diskspace

        if diskspace.is_disk_full(exc) and not isinstance(exc, diskspace.NoSpaceError):
            exc = diskspace.no_space_error(state_dir().root)  # a host command met a full disk
        errors.fail(exc.message, exc.hint, exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except OSError as exc:  # the host refused something we did not foresee: still one line
        if errors.debugging():
            raise
        from ccloudvm.core import diskspace

        if diskspace.is_disk_full(exc):
            full = diskspace.no_space_error(Path(exc.filename or state_dir().root))
            errors.fail(full.message, None, full.exit_code)
        where = f": {exc.filename}" if exc.filename else ""
        errors.fail(f"{exc.strerror or exc}{where}", "run with --debug for the details", 1)


def _interrupted(exc: KeyboardInterrupt) -> NoReturn:
    """^C, SIGTERM or SIGHUP: one line, and the exit status 128 + the signal's number."""
    if isinstance(exc, CreateInterrupted):
        if exc.removed:
            ui.console.print(f"interrupted; removed the half-made instance {exc.name}")
        else:
            ui.console.print(
                f"interrupted; {exc.name} stays, not provisioned "
                f"('ccloudvm provision {exc.name}' runs the steps again)"
            )
        sys.exit(exc.exit_code)
    ui.console.print("interrupted")
    sys.exit(getattr(exc, "exit_code", 130))
