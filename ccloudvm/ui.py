"""What the user sees: one console on stderr, steps with OK/FAIL, spinners, progress bars.

Library code reports progress through these helpers so that the CLI, scripts and tests
all get the same output; nothing else prints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# soft_wrap: an error or a step line stays one line in logs and pipes, however long.
console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)  # stdout: results a script may read (tables, JSON)
if not out.is_terminal:
    # A pipe has no width: never cut a table row (an SSH address, say) to 80 columns.
    out = Console(highlight=False, width=400)


def info(message: str) -> None:
    console.print(message, markup=False)  # a path or a guest's text may hold "[...]"


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}")


@contextmanager
def step(message: str) -> Iterator[None]:
    """Print `message ... OK (1.2 s)` or `... FAIL` around a piece of work."""
    start = time.monotonic()
    console.print(f"{escape(message)} ...", end="")
    try:
        yield
    except BaseException:
        console.print(" [red]FAIL[/red]")
        raise
    console.print(f" [green]OK[/green] ({time.monotonic() - start:.1f} s)")


@contextmanager
def spinner(message: str, *, stage_lines: bool = False) -> Iterator[Status]:
    """A spinner whose text can be updated with the current stage. Without a terminal
    (a pipe, CI, a log file) and with `stage_lines`, each new stage is printed as a line
    with its time instead (boot stages; not every output line of a provision step)."""
    if stage_lines and not console.is_terminal:
        console.print(f"{message} ...", markup=False)
        yield Status(None, message)
        return
    with console.status(escape(message)) as status:
        yield Status(status, message)


class Status:
    def __init__(self, status: object | None, prefix: str) -> None:
        self._status = status
        self._prefix = prefix
        self._start = time.monotonic()
        self._last = ""

    def update(self, stage: str) -> None:
        if self._status is not None:
            self._status.update(escape(f"{self._prefix}: {stage}"))  # type: ignore[attr-defined]
        elif stage != self._last:
            console.print(f"  {stage} (+{time.monotonic() - self._start:.1f} s)", markup=False)
        self._last = stage


def download_progress() -> Progress:
    """A progress bar for byte transfers (downloads, image conversion)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
