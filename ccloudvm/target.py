"""Where provisioners run: an instance over SSH, or this host (bare-metal mode).

Both offer the same two operations, so the same provisioning steps and cluster scripts
run unchanged in a VM and on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

OutputSink = Callable[[str], None]
"""Receives the command's output line by line (stdout and stderr merged)."""


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
