"""Free space: refuse work that cannot fit, and turn a full disk into one clear line.

Every writer of large files (downloads, image builds, saves, warm-boot snapshots) checks
the space it knows it needs before it starts, and reports ENOSPC the same way:
"no space left on FILESYSTEM: N MiB needed, M free; free some or set CCLOUDVM_HOME".
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ccloudvm.core.errors import CcloudvmError

_FULL_MARKERS = ("No space left on device", "ENOSPC", "Disk quota exceeded")


class NoSpaceError(CcloudvmError):
    """The file system holding ccloudvm's state is (or would be) full."""


def _existing(path: Path) -> Path:
    """The nearest existing folder of `path` (the one whose file system is asked)."""
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    return where


def _mount_point(path: Path) -> Path:
    where = Path(os.path.realpath(path))
    while not os.path.ismount(where) and where != where.parent:
        where = where.parent
    return where


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return None


def no_space_error(path: Path, needed_bytes: int | None = None) -> NoSpaceError:
    where = _existing(path)
    free = free_bytes(where)
    needed = f"{needed_bytes // 2**20} MiB needed, " if needed_bytes else ""
    free_text = f"{free // 2**20} MiB free" if free is not None else "free space unknown"
    return NoSpaceError(
        f"no space left on {_mount_point(where)}: {needed}{free_text}; "
        "free some or set CCLOUDVM_HOME"
    )


def check_free_space(path: Path, needed_bytes: int) -> None:
    """Raise NoSpaceError before a write of `needed_bytes` under `path` that cannot fit."""
    free = free_bytes(path)
    if free is not None and needed_bytes > free:
        raise no_space_error(path, needed_bytes)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError with ENOSPC/EDQUOT, or a host command whose output says the disk filled."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    output = getattr(exc, "output", None)
    return isinstance(output, str) and any(marker in output for marker in _FULL_MARKERS)


@contextmanager
def reporting_full_disk(path: Path, needed_bytes: int | None = None) -> Iterator[None]:
    """Turn a full disk met inside the block into NoSpaceError (callers remove their
    partial files in their own cleanup, which runs as this error passes through)."""
    try:
        yield
    except NoSpaceError:
        raise
    except (OSError, CcloudvmError) as exc:
        if not is_disk_full(exc):
            raise
        raise no_space_error(path, needed_bytes) from exc
