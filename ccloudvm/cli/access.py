"""Using an instance over ssh: run a command, connect a shell, ssh-config for other
tools, copy files."""

from __future__ import annotations

import os
import shlex
import sys
from typing import NoReturn

import click

from ccloudvm.cli import completion
from ccloudvm.cli.targets import pick_instance, state_dir
from ccloudvm.core.errors import UsageError


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "-t",
    "--tty",
    "tty",
    flag_value=True,
    default=None,
    help="Give the command a terminal (default: when stdin and stdout are ones).",
)
@click.option("-T", "--no-tty", "tty", flag_value=False, help="Never give it a terminal.")
@click.option("-w", "--workdir", metavar="DIR", help="Run it in this guest folder.")
@click.argument("name", shell_complete=completion.complete_instances)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(name: str, tty: bool | None, workdir: str | None, command: tuple[str, ...]) -> NoReturn:
    """Run COMMAND in the instance as over ssh: stdin passed in, stdout and stderr kept
    apart, its exit status ours; a terminal (-t) for commands that want one.

    \b
    Examples: ccloudvm run dev -- uname -a
              cat notes.txt | ccloudvm run dev -- tee notes.txt
              ccloudvm run dev -t -- sudo apt upgrade
    """
    argv = list(command)
    # Options after NAME too, as users write them: run dev -t -w /srv -- CMD.
    while argv and argv[0] in ("-t", "--tty", "-T", "--no-tty", "-w", "--workdir"):
        flag = argv.pop(0)
        if flag in ("-w", "--workdir"):
            if not argv:
                raise UsageError(f"{flag} needs a folder", hint="for example: -w /srv")
            workdir = argv.pop(0)
        else:
            tty = flag in ("-t", "--tty")
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given", hint=f"for example: ccloudvm run {name} -- uname -a")
    if tty is None:
        tty = sys.stdin.isatty() and sys.stdout.isatty()
    _exec_ssh(name, argv, tty=tty, workdir=workdir)


def _exec_ssh(
    name: str, argv: list[str] | None, *, tty: bool, workdir: str | None = None
) -> NoReturn:
    """Become the system ssh to the instance (host key pinned): it passes stdin, stderr,
    terminals, signals and the exit status on as a user expects of ssh."""
    from ccloudvm.instance import access as instance_access

    remote = None
    if argv:
        # ssh hands the guest's shell one string: every word quoted, as over plain ssh.
        remote = shlex.join(argv)
        if workdir:
            remote = f"cd -- {shlex.quote(workdir)} && exec {remote}"
    ssh = instance_access.ssh_argv(state_dir(), name, [remote] if remote else None, tty=tty)
    os.execv(ssh[0], ssh)  # noqa: S606 - argv list built by us, no local shell


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", required=False, shell_complete=completion.complete_instances)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def connect(name: str | None, command: tuple[str, ...]) -> NoReturn:
    """Open an interactive shell in the instance (system ssh, host key pinned), or run
    COMMAND there with a terminal: ccloudvm connect dev -- htop. Also: 'shell'."""
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    # Without a command ssh decides itself (a terminal when stdin is one).
    _exec_ssh(pick_instance(name), argv or None, tty=bool(argv))


@click.command("ssh-config")
@click.argument("name", required=False, shell_complete=completion.complete_instances)
def ssh_config(name: str | None) -> None:
    """Print an ssh_config stanza, so plain ssh, scp and editors can connect.

    \b
    Example: ccloudvm ssh-config dev >> ~/.ssh/config && ssh dev
    """
    from ccloudvm.instance import access as instance_access

    click.echo(instance_access.ssh_config(state_dir(), pick_instance(name)), nl=False)


@click.command()
@click.argument("name", shell_complete=completion.complete_instances)
@click.argument("paths", nargs=-1, required=True, metavar="SOURCE... DEST")
@click.option("-r", "--recursive", is_flag=True, help="Copy folders.")
def copy(name: str, paths: tuple[str, ...], recursive: bool) -> None:
    """Copy files between the host and the instance; guest paths start with ':'.

    \b
    ccloudvm copy dev ./file :/tmp/          host -> guest
    ccloudvm copy dev :/etc/os-release .     guest -> host
    ccloudvm copy dev -r ./src :/home/me/src folders
    ccloudvm copy dev a.txt b.txt :/tmp/     several, into a folder (as scp)
    """
    from ccloudvm.instance import access as instance_access
    from ccloudvm.remote import transfer

    if len(paths) < 2:
        raise UsageError(
            "give SOURCE... and DEST", hint="for example 'ccloudvm copy dev ./file :/tmp/'"
        )
    with instance_access.connect_target(state_dir(), name) as target:
        transfer.copy_many(target, list(paths[:-1]), paths[-1], recursive=recursive)


commands = [run, connect, ssh_config, copy]
