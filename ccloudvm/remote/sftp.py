"""Files and folder trees to and from an instance over SFTP (for ccloudvm.remote.ssh).

A file is written with its mode set before any content lands, and read into a temporary
file renamed into place; trees keep modes and symlinks, like `cp -r`.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import paramiko

from ccloudvm.core.errors import CcloudvmError, UsageError

_CHUNK = 32768


def _sftp_path(remote: str) -> str:
    # SFTP paths are relative to the login directory; accept the ~/ users write.
    if remote == "~":
        return "."
    if remote.startswith("~/"):
        return remote[2:] or "."
    return remote


class SFTPFiles:
    """The file operations of one instance, on the SFTP client `client` opens (lazily)."""

    def __init__(self, name: str, client: Callable[[], paramiko.SFTPClient]) -> None:
        self.name = name
        self._client = client

    def _file_error(self, exc: OSError, action: str, path: str) -> CcloudvmError:
        if isinstance(exc, FileNotFoundError):
            return CcloudvmError(f"cannot {action} {path} on {self.name}: no such file or folder")
        if isinstance(exc, PermissionError):
            return CcloudvmError(f"cannot {action} {path} on {self.name}: permission denied")
        return CcloudvmError(f"cannot {action} {path} on {self.name}: {exc}")

    def _write(self, source: IO[bytes], remote: str, mode: int) -> None:
        sftp = self._client()
        try:
            with sftp.open(_sftp_path(remote), "wb") as handle:
                handle.chmod(mode)  # before any content lands: secrets are never readable
                handle.set_pipelined(True)
                while chunk := source.read(_CHUNK):
                    handle.write(chunk)
        except OSError as exc:
            raise self._file_error(exc, "write", remote) from exc

    def put_file(self, local: Path, remote: str, *, mode: int = 0o644) -> None:
        with open(local, "rb") as source:
            self._write(source, remote, mode)

    def put_text(self, text: str, remote: str, *, mode: int = 0o644) -> None:
        self._write(io.BytesIO(text.encode("utf-8")), remote, mode)

    def get_file(self, remote: str, local: Path) -> None:
        """Copy a guest file to `local` (same mode), streamed into a temporary file and
        renamed, so an interrupted copy never leaves a half file under the real name."""
        sftp = self._client()
        try:
            attrs = sftp.stat(_sftp_path(remote))
            handle = sftp.open(_sftp_path(remote), "rb")
        except OSError as exc:
            raise self._file_error(exc, "read", remote) from exc
        mode = stat.S_IMODE(attrs.st_mode) if attrs.st_mode is not None else 0o644
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
        except OSError as exc:
            handle.close()
            raise CcloudvmError(f"cannot write {local}: {exc.strerror}") from exc
        try:
            with handle, os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), mode)
                handle.prefetch(attrs.st_size)
                while chunk := handle.read(_CHUNK):
                    out.write(chunk)
            os.replace(tmp, local)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise self._file_error(exc, "read", remote) from exc
            raise

    def is_dir(self, remote: str) -> bool:
        try:
            attrs = self._client().stat(_sftp_path(remote))
        except OSError:
            return False
        return attrs.st_mode is not None and stat.S_ISDIR(attrs.st_mode)

    def _exists(self, remote: str) -> bool:
        try:
            self._client().lstat(_sftp_path(remote))
        except OSError:
            return False
        return True

    def _mkdir(self, remote: str, mode: int) -> None:
        sftp = self._client()
        if self.is_dir(remote):
            return
        try:
            sftp.mkdir(_sftp_path(remote), mode)
        except OSError as exc:
            raise self._file_error(exc, "create folder", remote) from exc

    def put_tree(self, local_dir: Path, remote_dir: str) -> None:
        """Copy the folder local_dir to remote_dir (created), like `cp -r` and keeping modes."""
        if not local_dir.is_dir():
            raise UsageError(f"{local_dir} is not a folder")
        self._mkdir(remote_dir, stat.S_IMODE(local_dir.stat().st_mode))
        sftp = self._client()
        for entry in sorted(local_dir.iterdir()):
            remote = posixpath.join(remote_dir, entry.name)
            if entry.is_symlink():
                try:
                    if self._exists(remote):
                        sftp.remove(_sftp_path(remote))
                    sftp.symlink(str(entry.readlink()), _sftp_path(remote))
                except OSError as exc:
                    raise self._file_error(exc, "create symlink", remote) from exc
            elif entry.is_dir():
                self.put_tree(entry, remote)
            elif entry.is_file():
                self.put_file(entry, remote, mode=stat.S_IMODE(entry.stat().st_mode))
            # sockets, fifos and devices are not copied

    def get_tree(self, remote_dir: str, local_dir: Path) -> None:
        """Copy the folder remote_dir to local_dir (created), keeping modes and symlinks."""
        sftp = self._client()
        try:
            entries = sftp.listdir_attr(_sftp_path(remote_dir))
        except OSError as exc:
            raise self._file_error(exc, "list", remote_dir) from exc
        local_dir.mkdir(parents=True, exist_ok=True)
        for attrs in sorted(entries, key=lambda a: a.filename):
            remote = posixpath.join(remote_dir, attrs.filename)
            local = local_dir / attrs.filename
            mode = attrs.st_mode or 0
            if stat.S_ISLNK(mode):
                try:
                    target = sftp.readlink(_sftp_path(remote))
                except OSError as exc:
                    raise self._file_error(exc, "read symlink", remote) from exc
                if target is not None:
                    local.unlink(missing_ok=True)
                    local.symlink_to(target)
            elif stat.S_ISDIR(mode):
                self.get_tree(remote, local)
                local.chmod(stat.S_IMODE(mode))
            elif stat.S_ISREG(mode):
                self.get_file(remote, local)
