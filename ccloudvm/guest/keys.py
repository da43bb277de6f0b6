"""SSH keys: the user's login key for all guests and one host key per instance.

Keys are ed25519, made with `cryptography` (paramiko can read but not generate them).
The private half is written in OpenSSH format without a passphrase, mode 0600, the
public half as one "ssh-ed25519 AAAA... comment" line beside it with the suffix .pub.
Writes go to a temporary file that is renamed into place, so an interrupted run never
leaves half a key behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ccloudvm.core.errors import CcloudvmError
from ccloudvm.state.paths import StateDir

USER_KEY_COMMENT = "ccloudvm"


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str  # "-----BEGIN OPENSSH PRIVATE KEY-----\n...\n"
    public_openssh: str  # "ssh-ed25519 AAAA... comment" (no newline)

    @property
    def public_type_and_blob(self) -> str:
        """The public key without its comment: what known_hosts and pinning compare."""
        return " ".join(self.public_openssh.split()[:2])


def generate_ed25519(comment: str) -> KeyPair:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    comment = " ".join(comment.split())  # one line, no stray whitespace
    return KeyPair(private, f"{public} {comment}" if comment else public)


def public_from_private(private_openssh: str, comment: str) -> str:
    """The public line for a private key, to repair a missing .pub file."""
    key = serialization.load_ssh_private_key(private_openssh.encode("ascii"), password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{public.decode('ascii')} {comment}".strip()


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    The temporary file is created with `mode` already set, so a secret is never
    readable by others, not even for a moment.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_keypair(pair: KeyPair, private_path: Path) -> None:
    """Private key at `private_path` (0600), public key beside it with .pub (0644)."""
    private_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(private_path, pair.private_openssh.encode("ascii"), 0o600)
    public_path = private_path.with_name(private_path.name + ".pub")
    write_atomic(public_path, (pair.public_openssh + "\n").encode("ascii"), 0o644)


def read_keypair(private_path: Path) -> KeyPair:
    """Read a pair written by write_keypair; a missing .pub is rebuilt from the private key."""
    public_path = private_path.with_name(private_path.name + ".pub")
    try:
        private = private_path.read_text(encoding="ascii")
    except OSError as exc:
        raise CcloudvmError(
            f"cannot read SSH key {private_path}: {exc.strerror}",
            hint="check the file's owner and mode, or remove it to get a new key",
        ) from exc
    if public_path.exists():
        public = public_path.read_text(encoding="ascii").strip()
    else:
        try:
            public = public_from_private(private, USER_KEY_COMMENT)
        except ValueError as exc:
            raise CcloudvmError(
                f"SSH key {private_path} is not a valid unencrypted OpenSSH key",
                hint="remove it (and its .pub) to get a new key",
            ) from exc
        write_atomic(public_path, (public + "\n").encode("ascii"), 0o644)
    return KeyPair(private, public)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    # Two ccloudvm commands started at once must not each write half of a pair.
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_user_key(state: StateDir) -> KeyPair:
    """The key ccloudvm logs into guests with: read it, or create it on first use."""
    state.root.mkdir(parents=True, exist_ok=True)
    state.root.chmod(0o700)
    with _locked(state.root / ".keys.lock"):
        if state.private_key.exists():
            # Keep the key private even if someone loosened its mode.
            if state.private_key.stat().st_mode & 0o077:
                state.private_key.chmod(0o600)
            return read_keypair(state.private_key)
        pair = generate_ed25519(USER_KEY_COMMENT)
        write_keypair(pair, state.private_key)
        return pair
