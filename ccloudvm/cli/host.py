"""Commands about the host and the program: setup, version, completion."""

from __future__ import annotations

from typing import Any

import click

from ccloudvm.cli import completion
from ccloudvm.cli.targets import state_dir


def _print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.command()
@click.option("--check", is_flag=True, help="Only report; install nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def setup(check: bool, as_json: bool) -> None:
    """Check what the host needs (QEMU, qemu-img, ssh, mmdebstrap), install what is missing
    with apt-get (as root, or with sudo), and report the acceleration this host offers."""
    from ccloudvm.app import hostsetup

    report = hostsetup.setup(state_dir(), install=not check)
    if as_json:
        _print_json(report)


@click.command("version")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def version_command(as_json: bool) -> None:
    """Show ccloudvm's version, QEMU's, the acceleration a VM would get and why, and the
    state directory. (--version prints ccloudvm's version only.)"""
    from ccloudvm.cli import version

    data = version.report(state_dir())
    if as_json:
        _print_json(data)
        return
    for line in version.lines(data):
        click.echo(line)


@click.command("completion")
@click.argument("shell", type=click.Choice(completion.SHELLS))
def completion_command(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    It completes commands, options, instance, workload and image names.

    \b
    bash:  echo 'eval "$(ccloudvm completion bash)"' >> ~/.bashrc
    zsh:   echo 'eval "$(ccloudvm completion zsh)"' >> ~/.zshrc
    fish:  ccloudvm completion fish > ~/.config/fish/completions/ccloudvm.fish
    """
    root = click.get_current_context().find_root().command
    click.echo(completion.script(root, shell))


commands = [setup, version_command, completion_command]
