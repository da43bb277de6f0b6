"""How the command line reports a failure: one line, 'error: what (what to do)', and a
traceback only under --debug (which the top-level group switches on)."""

from __future__ import annotations

import sys
from typing import NoReturn

_debug = False


def set_debug(on: bool) -> None:
    global _debug
    _debug = on


def debugging() -> bool:
    """--debug was given: errors pass on as tracebacks."""
    return _debug


def print_error(message: str, hint: str | None) -> None:
    """The line as it is, red at a terminal. Plain text, not rich: rich would load on every
    error and turn ':b:' or ':cat:' in a path or a value into an emoji."""
    text = f"error: {message}" + (f" ({hint})" if hint else "")
    if sys.stderr.isatty():
        text = f"\x1b[31m{text}\x1b[0m"
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def fail(message: str, hint: str | None, code: int) -> NoReturn:
    print_error(message, hint)
    sys.exit(code)
