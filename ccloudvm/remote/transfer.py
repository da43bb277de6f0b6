"""`ccloudvm copy`: which side a path is on, and the copy itself over SFTP."""

from __future__ import annotations

import posixpath
from pathlib import Path

from ccloudvm.core.errors import UsageError
from ccloudvm.remote.ssh import SSHTarget


def _guest(path: str) -> str | None:
    return path[1:] if path.startswith(":") else None


def copy(target: SSHTarget, source: str, dest: str, *, recursive: bool) -> None:
    src_guest, dest_guest = _guest(source), _guest(dest)
    if (src_guest is None) == (dest_guest is None):
        raise UsageError(
            "one of SOURCE and DEST must be a guest path starting with ':'",
            hint="for example 'ccloudvm copy dev ./file :/tmp/'",
        )
    if dest_guest is not None:
        _to_guest(target, Path(source).expanduser(), dest_guest or ".", recursive)
    else:
        assert src_guest is not None
        _to_host(target, src_guest, Path(dest).expanduser(), recursive)


def copy_many(target: SSHTarget, sources: list[str], dest: str, *, recursive: bool) -> None:
    """Several SOURCEs into folder DEST, as scp does: all sources on one side, DEST on the
    other and a folder that exists (checked before anything is copied)."""
    if len(sources) == 1:
        copy(target, sources[0], dest, recursive=recursive)
        return
    sides = {_guest(s) is None for s in sources}
    if len(sides) != 1 or (_guest(dest) is None) in sides:
        raise UsageError(
            "the SOURCEs must all be on one side and DEST on the other (guest paths start with ':')",
            hint="for example 'ccloudvm copy dev a.txt b.txt :/tmp/'",
        )
    dest_guest = _guest(dest)
    is_folder = (
        target.is_dir(dest_guest or ".")
        if dest_guest is not None
        else Path(dest).expanduser().is_dir()
    )
    if not is_folder:
        raise UsageError(
            f"{dest} is not a folder", hint="several SOURCEs go into a folder that exists"
        )
    for source in sources:
        if _guest(source) is None and not Path(source).expanduser().exists():
            raise UsageError(f"{source} does not exist")  # before anything is copied
    for source in sources:
        copy(target, source, dest, recursive=recursive)


def _to_guest(target: SSHTarget, local: Path, remote: str, recursive: bool) -> None:
    if not local.exists():
        raise UsageError(f"{local} does not exist")
    if target.is_dir(remote) or remote.endswith("/"):
        remote = posixpath.join(remote, local.name)
    if local.is_dir():
        if not recursive:
            raise UsageError(f"{local} is a folder", hint="add -r to copy folders")
        target.put_tree(local, remote)
    else:
        target.put_file(local, remote, mode=local.stat().st_mode & 0o777)


def _to_host(target: SSHTarget, remote: str, local: Path, recursive: bool) -> None:
    if local.is_dir():
        local = local / posixpath.basename(remote.rstrip("/"))
    if target.is_dir(remote):
        if not recursive:
            raise UsageError(f"{remote} is a folder in the guest", hint="add -r to copy folders")
        target.get_tree(remote, local)
    else:
        target.get_file(remote, local)
