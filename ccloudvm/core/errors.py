"""Errors a user can act on.

Every failure a user can cause or fix is raised as a CcloudvmError carrying one line
that says what happened and, in `hint`, what to do next. The CLI prints it without a
traceback (unless --debug) and exits with `exit_code`.
"""

from __future__ import annotations


class CcloudvmError(Exception):
    """A failure with a one-line message and an optional hint for the user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(CcloudvmError):
    """Bad input from the user: a bad name, size, path, workload or flag. Exit status 2."""

    exit_code = 2


class NotFoundError(UsageError):
    """A named thing (instance, workload, image) does not exist."""


class StateError(CcloudvmError):
    """The instance is not in a state that allows the command (stopped, running, busy)."""


class ToolMissingError(CcloudvmError):
    """A host program (qemu, qemu-img, mmdebstrap, ...) is not installed."""


class CreateInterrupted(KeyboardInterrupt):
    """A create stopped by ^C, SIGTERM or SIGHUP; `removed` says whether the half-made
    instance was removed (it stays, booted but not provisioned, once provisioning began)."""

    def __init__(self, name: str, removed: bool, exit_code: int) -> None:
        super().__init__(name)
        self.name = name
        self.removed = removed
        self.exit_code = exit_code
