"""The cloud-init NoCloud seed: user-data, meta-data and network-config on an ISO.

The ISO (volume id `cidata`, ISO9660 + Joliet + Rock Ridge) is written with pycdlib, so
no xorriso or genisoimage is needed. cloud-init 22.4 (Debian 12) reads it.

What the user-data does, in cloud-init's own order (Debian 12's cloud.cfg):
init stage:   bootcmd (group and user with the host's ids, home owned by the user)
              -> mounts (9p entries in fstab, `mount -a`) -> hostname -> users-groups
              (sudo, authorized keys) -> ssh (our pinned host key, nothing generated)
config stage: runcmd (on a root host: chown each mount's root to the guest user)
final stage:  final_message, which prints READY_MARKER on the serial console.
The user is made in bootcmd because the mounts module runs before users-groups and
would otherwise create a mount point under /home/USER as root, leaving a root-owned home.
"""

from __future__ import annotations

import copy
import io
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycdlib
import yaml

from ccloudvm.core.specs import MountSpec
from ccloudvm.guest.keys import KeyPair, write_atomic

READY_MARKER = "CCLOUDVM-READY"
VOLUME_ID = "cidata"
# QEMU gives the first NIC this MAC unless told otherwise; the instance passes it
# explicitly (`-device virtio-net-pci,...,mac=GUEST_MAC`) so network-config can match it.
GUEST_MAC = "52:54:00:12:34:56"
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144,nofail"

# ISO9660 level-1 names (8.3, upper case) beside the real names Rock Ridge and Joliet carry.
_FILES = {
    "user-data": "/USERDATA.;1",
    "meta-data": "/METADATA.;1",
    "network-config": "/NETWORKC.;1",
}


@dataclass(frozen=True)
class SeedConfig:
    hostname: str  # the instance name
    user_name: str
    uid: int
    gid: int
    home: str
    authorized_keys: list[str]
    host_key: KeyPair  # the instance's ed25519 host key, pinned by the host
    mounts: list[MountSpec] = field(default_factory=list)
    chown_mounts: bool = False  # root host: guest root chowns each mount root to the user
    extra_user_data: dict[str, Any] = field(default_factory=dict)  # the workload's cloud-config
    mac: str = GUEST_MAC


def new_instance_id(name: str) -> str:
    """A fresh instance-id. Keep it for the instance; a new one makes cloud-init run again."""
    return f"iid-{name}-{secrets.token_hex(4)}"


def merge_cloud_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge two cloud-configs into a new one: maps merge recursively, `extra`'s scalars
    win, lists are concatenated with `base` first. Neither input is changed."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge_cloud_config(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            merged[key] = old + copy.deepcopy(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _sh(script: str, *args: str | int) -> list[str]:
    # Values travel as positional parameters, never pasted into the script text.
    return ["sh", "-c", script, "sh", *(str(arg) for arg in args)]


def _user_bootcmd(cfg: SeedConfig) -> list[list[str]]:
    return [
        _sh('getent group "$1" >/dev/null || groupadd -g "$1" "$2"', cfg.gid, cfg.user_name),
        _sh(
            'id -u "$1" >/dev/null 2>&1 || useradd -m -u "$2" -g "$3" -d "$4" -s /bin/bash "$1"',
            cfg.user_name,
            cfg.uid,
            cfg.gid,
            cfg.home,
        ),
    ]


def _mount_entry(mount: MountSpec) -> list[str]:
    options = NINEP_OPTIONS + (",ro" if mount.readonly else "")
    # All six fields as strings: cloud-init writes them into fstab as they are.
    return [mount.tag, mount.guest_path, "9p", options, "0", "0"]


def _chown_runcmd(cfg: SeedConfig) -> list[list[str]]:
    # Only the mount's root, not recursively: with mapped-xattr this just records the
    # owner in an xattr on the host. Read-only mounts cannot be chowned and need not be.
    script = (
        'if mountpoint -q "$1"; then chown "$2" "$1"; '
        'else echo "ccloudvm: $1 is not mounted" >&2; fi'
    )
    owner = f"{cfg.uid}:{cfg.gid}"
    return [_sh(script, m.guest_path, owner) for m in cfg.mounts if not m.readonly]


def build_user_data(cfg: SeedConfig) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hostname": cfg.hostname,
        "fqdn": cfg.hostname,
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "disable_root": True,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        # With ssh_keys given, cloud-init generates no host keys at all. (An empty
        # ssh_genkeytypes would say the same but fails 22.4's schema: minItems 1.)
        "ssh_keys": _ssh_keys(cfg.host_key),
        "bootcmd": _user_bootcmd(cfg),
        "users": [
            {
                "name": cfg.user_name,
                "uid": cfg.uid,
                "homedir": cfg.home,
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": list(cfg.authorized_keys),
            }
        ],
        "growpart": {"mode": "auto", "devices": ["/"]},
        "resize_rootfs": True,
        "package_update": False,
        "package_upgrade": False,
    }
    if cfg.mounts:
        base["mounts"] = [_mount_entry(m) for m in cfg.mounts]
        base["mount_default_fields"] = [None, None, "auto", "defaults,nofail", "0", "2"]
        if cfg.chown_mounts and any(not m.readonly for m in cfg.mounts):
            base["runcmd"] = _chown_runcmd(cfg)
    merged = merge_cloud_config(base, cfg.extra_user_data)
    # The host relies on these two: a workload must not replace them.
    merged["ssh_keys"] = _ssh_keys(cfg.host_key)
    merged["final_message"] = f"{READY_MARKER} $UPTIME"
    return merged


def _ssh_keys(host_key: KeyPair) -> dict[str, str]:
    return {
        "ed25519_private": host_key.private_openssh,
        "ed25519_public": host_key.public_openssh,
    }


def build_meta_data(cfg: SeedConfig, instance_id: str) -> dict[str, Any]:
    return {"instance-id": instance_id, "local-hostname": cfg.hostname}


def build_network_config(mac: str = GUEST_MAC) -> dict[str, Any]:
    """DHCP on the first NIC, matched by its MAC.

    Matching by driver or name glob is not enough: Debian's cloud-init renders to
    ifupdown (ENI), which ignores `match: driver` and would name the interface after
    the config key; a MAC match is resolved to the real interface name everywhere.
    """
    return {
        "version": 2,
        "ethernets": {"eth0": {"match": {"macaddress": mac}, "dhcp4": True}},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (keys, scripts) as YAML block literals, so the seed is readable."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _dump(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)


def render_seed_files(cfg: SeedConfig, instance_id: str) -> dict[str, str]:
    """The three seed files as text, keyed by their names on the ISO."""
    return {
        "user-data": "#cloud-config\n" + _dump(build_user_data(cfg)),
        "meta-data": _dump(build_meta_data(cfg, instance_id)),
        "network-config": _dump(build_network_config(cfg.mac)),
    }


def write_seed_iso(path: Path, cfg: SeedConfig, instance_id: str) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=VOLUME_ID, joliet=3, rock_ridge="1.09")
    try:
        for name, text in render_seed_files(cfg, instance_id).items():
            data = text.encode("utf-8")
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                iso_path=_FILES[name],
                rr_name=name,
                joliet_path=f"/{name}",
            )
        buffer = io.BytesIO()
        iso.write_fp(buffer)
    finally:
        iso.close()
    # The user-data holds the instance's private host key.
    write_atomic(path, buffer.getvalue(), 0o600)


def read_seed_iso(path: Path) -> dict[str, str]:
    """The files on a seed ISO by their Rock Ridge names (for tests and debugging)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        files: dict[str, str] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot() or child.is_dir():
                continue
            name = child.rock_ridge.name().decode("utf-8")
            buffer = io.BytesIO()
            iso.get_file_from_iso_fp(buffer, rr_path=f"/{name}")
            files[name] = buffer.getvalue().decode("utf-8")
        return files
    finally:
        iso.close()
