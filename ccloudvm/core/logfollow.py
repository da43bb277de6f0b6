"""Following a growing log file (an instance's serial console) as `tail -f` does."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.2


def follow(path: Path, offset: int, keep_going: Callable[[], bool]) -> None:
    """Write what is added to `path` after `offset` to stdout while `keep_going()` is true
    (the file may not exist yet: a create writes it when its VM boots), then the rest."""
    while True:
        going = keep_going()  # asked before reading, so nothing written meanwhile is lost
        offset = _copy_from(path, offset)
        if not going:
            return
        time.sleep(POLL_SECONDS)


def _copy_from(path: Path, offset: int) -> int:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return offset
    if chunk:
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
    return offset + len(chunk)
