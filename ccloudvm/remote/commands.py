"""Commands for an instance's shell: the quoted command line, and output split into lines."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from ccloudvm.core.errors import UsageError
from ccloudvm.remote.target import OutputSink, check_env_names


def build_command(
    argv: list[str], *, env: Mapping[str, str] | None = None, sudo: bool = False
) -> str:
    """The command line sent to the guest's shell: every argument quoted.

    env goes through `env K=V ...` (after sudo, so sudo's env_reset does not drop it).
    """
    if not argv:
        raise UsageError("empty command")
    words: list[str] = []
    if sudo:
        words += ["sudo", "-n", "-E"]
    if env:
        check_env_names(env)
        words += ["env", *(f"{key}={value}" for key, value in env.items())]
    return shlex.join(words + list(argv))


class LineSplitter:
    """Turns a byte stream into lines (without the newline) for an OutputSink."""

    def __init__(self, sink: OutputSink | None) -> None:
        self._sink = sink
        self._pending = b""

    def feed(self, data: bytes) -> None:
        if self._sink is None:
            return
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = b""

    def _emit(self, line: bytes) -> None:
        assert self._sink is not None
        self._sink(line.rstrip(b"\r").decode("utf-8", errors="replace"))
