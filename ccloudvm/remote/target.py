"""Where provisioners run: an instance over SSH, or this host (bare-metal mode).

Both offer the same two operations, so the same provisioning steps and cluster scripts
run unchanged in a VM and on the host.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from ccloudvm.core.errors import UsageError

OutputSink = Callable[[str], None]
"""Receives the command's output line by line (stdout and stderr merged)."""

# What an environment variable's name may be: a shell identifier. Anything else could
# end an `export` or `env K=V` word and start a command of its own.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_names(env: Mapping[str, str] | None, where: str = "") -> None:
    """Refuse an environment whose names are not shell identifiers (one line)."""
    for key in env or {}:
        if not _ENV_NAME.fullmatch(key):
            raise UsageError(
                f"environment variable name {key!r}{where} is not valid",
                hint="names are letters, digits and _ and do not start with a digit",
            )


class Target(Protocol):
    name: str

    def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        output: OutputSink | None = None,
        sudo: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Run argv (no shell unless argv says so), stream output, return the exit status."""
        ...

    def put_file(self, local: Path, remote: str, *, mode: int = 0o644) -> None:
        """Copy one local file to `remote` on the target."""
        ...

    def put_text(self, text: str, remote: str, *, mode: int = 0o644) -> None:
        """Write `text` to the file `remote` on the target."""
        ...
