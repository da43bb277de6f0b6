"""How the command line reports a failure: one line, 'error: what (what to do)', and a
traceback only under --debug (which the top-level group switches on)."""

from __future__ import annotations

import sys
from typing import NoReturn

from ccloudvm.core import ui

_debug = False


def set_debug(on: bool) -> None:
    global _debug
    _debug = on


def debugging() -> bool:
    """--debug was given: errors pass on as tracebacks."""
    return _debug


def print_error(message: str, hint: str | None) -> None:
    text = f"error: {message}" + (f" ({hint})" if hint else "")
    ui.console.print(
        text, markup=False, highlight=False, style="red" if sys.stderr.isatty() else None
    )


def fail(message: str, hint: str | None, code: int) -> NoReturn:
    print_error(message, hint)
    sys.exit(code)
