"""Offline generalising on a real ext4 image made here with mkfs.ext4 -d (no VM, no mount)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ccloudvm.core.errors import CcloudvmError
from ccloudvm.images.generalise import generalise


def _ext4_with(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "root"
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    raw = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "64M", str(raw)], check=True)  # noqa: S603,S607
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(raw)], check=True)  # noqa: S603,S607
    return raw


def _listing(raw: Path, directory: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"ls -l {directory}", str(raw)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # noqa: S603,S607


def test_instance_identity_is_removed_and_user_data_kept(tmp_path: Path) -> None:
    raw = _ext4_with(tmp_path, {
        "/etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "/etc/ssh/ssh_host_ed25519_key": "secret", "/etc/ssh/ssh_host_ed25519_key.pub": "pub",
        "/etc/ssh/sshd_config": "keep me",
        "/home/dev/.ssh/authorized_keys": "ssh-ed25519 AAAA ccloudvm",
        "/home/dev/work.txt": "the user's work",
        "/var/lib/cloud/data/instance-id": "old-id",
        "/var/log/cloud-init.log": "old log",
    })  # fmt: skip
    generalise(raw, "dev")
    ssh = _listing(raw, "/etc/ssh")
    assert "ssh_host_ed25519_key" not in ssh and "sshd_config" in ssh
    assert "authorized_keys" not in _listing(raw, "/home/dev/.ssh")
    assert "work.txt" in _listing(raw, "/home/dev")
    assert "instance-id" not in _listing(raw, "/var/lib/cloud/data")
    machine_id = subprocess.run(
        ["debugfs", "-R", "stat /etc/machine-id", str(raw)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # noqa: S603,S607
    assert "Size: 0" in machine_id


def test_a_partitioned_disk_is_refused_with_advice(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 2 * 1024 * 1024)
    with pytest.raises(CcloudvmError, match="partitioned") as info:
        generalise(raw, "dev")
    assert info.value.hint and "ccloudvm build" in info.value.hint
