from __future__ import annotations

import base64
import io
import stat
import threading
from pathlib import Path

import paramiko
import pytest

from ccloudvm.core.errors import CcloudvmError
from ccloudvm.guest import keys
from ccloudvm.guest.keys import (
    KeyPair,
    ensure_user_key,
    generate_ed25519,
    read_keypair,
    write_atomic,
    write_keypair,
)
from ccloudvm.state.paths import StateDir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_ed25519_formats() -> None:
    pair = generate_ed25519("me@host")
    assert pair.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert pair.private_openssh.rstrip().endswith("-----END OPENSSH PRIVATE KEY-----")
    kind, blob, comment = pair.public_openssh.split(" ")
    assert kind == "ssh-ed25519"
    assert comment == "me@host"
    assert pair.public_type_and_blob == f"{kind} {blob}"
    # paramiko (the SSH client we use) reads the private key and derives the same public key.
    loaded = paramiko.Ed25519Key.from_private_key(io.StringIO(pair.private_openssh))
    assert loaded.get_base64() == blob
    assert base64.b64decode(blob)[:15] == b"\x00\x00\x00\x0bssh-ed25519"


def test_generate_is_random_and_comment_is_one_line() -> None:
    a = generate_ed25519("a b\nc")
    b = generate_ed25519("")
    assert a.public_openssh.endswith(" a b c")
    assert len(b.public_openssh.split(" ")) == 2
    assert a.private_openssh != b.private_openssh


def test_write_keypair_modes_and_content(tmp_path: Path) -> None:
    pair = generate_ed25519("x")
    private = tmp_path / "sub" / "host_ed25519"
    write_keypair(pair, private)
    public = tmp_path / "sub" / "host_ed25519.pub"
    assert _mode(private) == 0o600
    assert _mode(public) == 0o644
    assert private.read_text() == pair.private_openssh
    assert public.read_text() == pair.public_openssh + "\n"
    assert read_keypair(private) == pair
    # Nothing but the two files: the temporary files were renamed away.
    assert sorted(p.name for p in private.parent.iterdir()) == ["host_ed25519", "host_ed25519.pub"]


def test_write_atomic_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")

    with pytest.raises(TypeError):
        write_atomic(target, "not bytes", 0o600)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_ensure_user_key_creates_once(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "home")
    first = ensure_user_key(state)
    assert _mode(state.root) == 0o700
    assert _mode(state.private_key) == 0o600
    assert state.public_key.read_text().strip() == first.public_openssh
    assert first.public_openssh.endswith(" ccloudvm")
    second = ensure_user_key(state)
    assert second == first


def test_ensure_user_key_repairs_mode_and_missing_public(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    pair = ensure_user_key(state)
    state.private_key.chmod(0o644)
    state.public_key.unlink()
    again = ensure_user_key(state)
    assert _mode(state.private_key) == 0o600
    assert again.public_type_and_blob == pair.public_type_and_blob
    assert state.public_key.exists()


def test_ensure_user_key_concurrent_callers_agree(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    results: list[KeyPair] = []

    def worker() -> None:
        results.append(ensure_user_key(state))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.private_openssh for r in results}) == 1
    assert read_keypair(state.private_key) == results[0]


def test_read_keypair_bad_key_is_user_error(tmp_path: Path) -> None:
    private = tmp_path / "id"
    private.write_text("garbage")
    with pytest.raises(CcloudvmError, match="not a valid"):
        read_keypair(private)
    with pytest.raises(CcloudvmError, match="cannot read"):
        read_keypair(tmp_path / "missing")


def test_public_from_private_matches() -> None:
    pair = generate_ed25519("c")
    assert keys.public_from_private(pair.private_openssh, "c") == pair.public_openssh
