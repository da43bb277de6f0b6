"""Where ccloudvm keeps its state: one directory, ~/.ccloudvm unless CCLOUDVM_HOME says otherwise.

<root>/id_ed25519[.pub]      the SSH key ccloudvm logs into guests with
<root>/cache/                downloaded and built images, downloads in progress
<root>/images/               the user's own image definitions (*.yaml)
<root>/workloads/            the user's own workload definitions (*.yaml)
<root>/instances/NAME/       one directory per instance
<root>/run/                  facts cached for this boot of the host (acceleration probe)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ccloudvm.core.errors import UsageError

ENV_HOME = "CCLOUDVM_HOME"


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def from_env(cls) -> StateDir:
        value = os.environ.get(ENV_HOME)
        root = Path(value).expanduser() if value else Path.home() / ".ccloudvm"
        return cls(root.absolute())

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def user_images(self) -> Path:
        return self.root / "images"

    @property
    def user_workloads(self) -> Path:
        return self.root / "workloads"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def private_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def public_key(self) -> Path:
        return self.root / "id_ed25519.pub"

    def instance_dir(self, name: str) -> Path:
        return self.instances / name

    def ensure(self) -> None:
        """Create the directory tree; private to the user, since it holds keys and sockets.
        A symbolic link where one of its folders should be is refused, never followed."""
        for path in (self.cache, self.instances, self.user_images, self.user_workloads, self.run):
            refuse_link(path)
        for path in (self.root, self.cache, self.instances, self.run):
            path.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)


def refuse_root_in_foreign_state(state: StateDir) -> None:
    """As root (sudo -E), never write into an ordinary user's state directory: what root
    makes there (images, locks, caches) the user could not remove later. Nothing ccloudvm
    does after the host packages needs root: image builds run in a user namespace."""
    if os.geteuid() != 0:
        return
    where = state.root
    while not where.exists() and where != where.parent:
        where = where.parent
    owner = where.stat().st_uid
    if owner != 0:
        raise UsageError(
            f"running as root on {state.root}, which belongs to uid {owner}, would leave "
            "root-owned files there",
            hint="run ccloudvm as that user, without sudo (image builds need no root)",
        )


def _shown(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text.startswith(home + "/") else text


def refuse_link(path: Path) -> None:
    """Raise a one-line error if `path` is a symbolic link (dangling or not): ccloudvm
    never follows one out of its state directory."""
    if path.is_symlink():
        from ccloudvm.core.errors import StateError

        raise StateError(
            f"{_shown(path)} is a symbolic link to {os.readlink(path)}; ccloudvm does not "
            "follow links in its state directory: remove the link"
        )


def resource_dir(name: str) -> Path:
    """A bundled data folder (templates, cloud-init, images) of the source tree."""
    package = Path(__file__).resolve().parents[1]  # ccloudvm/, above this state/ package
    for candidate in (package / "data" / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled folder {name!r} is missing from the installation")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing): one process at a time fills a
    cache entry; the others wait, then find it made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_link(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
