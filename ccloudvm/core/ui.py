"""What the user sees: one console on stderr, steps with OK/FAIL, spinners, progress bars.

Library code reports progress through these helpers so that the CLI, scripts and tests
all get the same output; nothing else prints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

# rich is imported on first output, not at start-up: `ccloudvm --help` and `instances`
# must start fast (issue 10), and rich costs tens of milliseconds.
_consoles: dict[str, Console] = {}


def _make(name: str) -> Console:
    from rich.console import Console

    if name == "console":
        # soft_wrap: an error or a step line stays one line in logs and pipes, however long.
        return Console(stderr=True, highlight=False, soft_wrap=True)
    made = Console(highlight=False)  # stdout: results a script may read (tables, JSON)
    if not made.is_terminal:
        # A pipe has no width: never cut a table row (an SSH address, say) to 80 columns.
        made = Console(highlight=False, width=400)
    return made


def __getattr__(name: str) -> Console:
    """`ui.console` (stderr: progress, warnings, errors) and `ui.out` (stdout: results)."""
    if name not in ("console", "out"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _consoles:
        _consoles[name] = _make(name)
    return _consoles[name]


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _console() -> Console:
    return __getattr__("console")


def info(message: str) -> None:
    # Plain text, straight to stderr: a path or a guest's text may hold "[...]", and a
    # command that only reports (instances, status) should not wait for rich to load.
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    label = "\x1b[33mwarning:\x1b[0m" if sys.stderr.isatty() else "warning:"
    sys.stderr.write(f"{label} {message}\n")
    sys.stderr.flush()


@contextmanager
def step(message: str) -> Iterator[None]:
    """Print `message ... OK (1.2 s)` or `... FAIL` around a piece of work."""
    start = time.monotonic()
    _console().print(f"{escape(message)} ...", end="")
    try:
        yield
    except BaseException:
        _console().print(" [red]FAIL[/red]")
        raise
    _console().print(f" [green]OK[/green] ({time.monotonic() - start:.1f} s)")


@contextmanager
def spinner(message: str, *, stage_lines: bool = False) -> Iterator[Status]:
    """A spinner whose text can be updated with the current stage. Without a terminal
    (a pipe, CI, a log file) and with `stage_lines`, each new stage is printed as a line
    with its time instead (boot stages; not every output line of a provision step)."""
    if stage_lines and not _console().is_terminal:
        _console().print(f"{message} ...", markup=False)
        yield Status(None, message)
        return
    with _console().status(escape(message)) as status:
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
            _console().print(f"  {stage} (+{time.monotonic() - self._start:.1f} s)", markup=False)
        self._last = stage


def download_progress() -> Progress:
    """A progress bar for byte transfers (downloads, image conversion)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(),
        transient=False,
    )
