"""Which instances a command acts on (a name, the only one, NAMES or --all), and acting on
each of them so that one failure does not stop the others."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ccloudvm.cli.errors import debugging, print_error
from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.state.paths import StateDir


def state_dir() -> StateDir:
    return StateDir.from_env()


def pick_instance(name: str | None) -> str:
    """An explicit name, or the only instance there is."""
    if name:
        return name
    from ccloudvm.state.instance_state import instance_names

    names = instance_names(state_dir())
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError("there are no instances", hint="create one with 'ccloudvm create debian'")
    raise UsageError("more than one instance exists; name one", hint="names: " + ", ".join(names))


def targets_of(names: tuple[str, ...], every: bool, *, pick: bool = True) -> list[str]:
    """The instances a command acts on: NAMES (each once), --all, or else the only one."""
    if every and names:
        raise UsageError("give instance names or --all, not both")
    if every:
        from ccloudvm.state.instance_state import instance_names

        return instance_names(state_dir())
    if not names:
        if not pick:
            raise UsageError("name the instance(s) to act on, or give --all")
        return [pick_instance(None)]
    return list(dict.fromkeys(names))


def each(names: list[str], action: Callable[[str], object]) -> None:
    """`action` on every name; a failure is one line and does not stop the others.

    With one name its error is raised as before. With several, each failure is printed
    as it happens ('error: NAME: what went wrong (hint)') and the exit status is non-zero
    at the end: the failures' own status when they share one, else 1."""
    if len(names) == 1:
        action(names[0])
        return
    codes = []
    for name in names:
        try:
            action(name)
        except (CcloudvmError, OSError) as exc:
            if debugging():
                raise
            if isinstance(exc, CcloudvmError):
                message, hint, code = exc.message, exc.hint, exc.exit_code
            else:
                where = f": {exc.filename}" if exc.filename else ""
                message, hint, code = f"{exc.strerror or exc}{where}", None, 1
            if repr(name) not in message and name not in message.split():
                message = f"{name}: {message}"
            print_error(message, hint)
            codes.append(code)
    if codes:
        sys.exit(codes[0] if len(set(codes)) == 1 else 1)
