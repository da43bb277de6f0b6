"""Generalising a stopped instance's disk offline, so a saved image boots as a new machine.

Works on a raw copy of the disk with debugfs (e2fsprogs): no mount, no root, no guest
boot. Removed: the machine id (emptied, so systemd makes a new one), the SSH host keys,
the instance user's authorized_keys, cloud-init's record of the instance and logs. A
new instance made from the image gets a new instance-id, so cloud-init runs its
per-instance work again and installs that instance's pinned host key.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError
from ccloudvm.core.proc import run

EXT_MAGIC = 0xEF53

# debugfs commands; failures of single commands (a file that is not there) are harmless.
_COMMANDS = [
    "rm /etc/machine-id",
    "write /dev/null /etc/machine-id",
    "rm /var/lib/dbus/machine-id",
    "rm /etc/ssh/ssh_host_ed25519_key",
    "rm /etc/ssh/ssh_host_ed25519_key.pub",
    "rm /etc/ssh/ssh_host_rsa_key",
    "rm /etc/ssh/ssh_host_rsa_key.pub",
    "rm /etc/ssh/ssh_host_ecdsa_key",
    "rm /etc/ssh/ssh_host_ecdsa_key.pub",
    "rm /var/lib/cloud/instance",
    "rm /var/lib/cloud/data/instance-id",
    "rm /var/lib/cloud/data/previous-instance-id",
    "rm /var/log/cloud-init.log",
    "rm /var/log/cloud-init-output.log",
]


def _is_ext(raw: Path, offset: int) -> bool:
    with raw.open("rb") as disk:
        disk.seek(offset + 1024 + 56)
        data = disk.read(2)
    return len(data) == 2 and struct.unpack("<H", data)[0] == EXT_MAGIC


def check_whole_disk_ext(raw: Path) -> None:
    """Offline generalising handles a whole-disk ext4 root (the images ccloudvm builds)."""
    if not _is_ext(raw, 0):
        raise CcloudvmError(
            "this instance's disk is partitioned; ccloudvm can only generalise whole-disk ext4 images offline",
            hint="use 'ccloudvm build WORKLOAD', which generalises inside the running guest",
        )


def generalise(raw: Path, guest_user: str) -> None:
    """Remove what ties the disk in `raw` to one instance."""
    check_whole_disk_ext(raw)
    commands = [*_COMMANDS, f"rm /home/{guest_user}/.ssh/authorized_keys"]
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as script:
        script.write("\n".join(commands) + "\n")
    try:
        with ui.step("Generalising the disk (machine id, host keys, cloud-init state)"):
            run(["debugfs", "-w", "-f", script.name, raw])
    finally:
        Path(script.name).unlink(missing_ok=True)
