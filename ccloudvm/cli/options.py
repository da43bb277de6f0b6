"""Click options and arguments that several commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ccloudvm.cli import completion
from ccloudvm.core import formats, sizes


def resize_options(command: Any) -> Any:
    for option in reversed((
        click.option("--mem", type=sizes.MIB, help="New memory size: 4G, 512M, or MiB."),
        click.option("--cpus", type=int, help="New number of vCPUs."),
        click.option("--disk", type=sizes.GIB, help="New disk size: 40G, or GiB (it only grows)."),
    )):  # fmt: skip
        command = option(command)
    return command


NAMES = click.argument(
    "names", nargs=-1, metavar="[NAME]...", shell_complete=completion.complete_instances
)


def all_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--all", "every", is_flag=True, help=f"{what} every instance.")


def format_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--format table|json|yaml|csv and its older alias --json."""
    command = click.option("--json", "as_json", is_flag=True, help="The same as --format json.")(
        command
    )
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(formats.FORMATS),
        help="Output format: table (the default), or json, yaml, csv for scripts.",
    )(command)
