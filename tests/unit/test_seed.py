from __future__ import annotations

import io
import stat
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from ccloudvm.core.specs import MountSpec
from ccloudvm.guest.keys import generate_ed25519
from ccloudvm.guest.seed import (
    GUEST_MAC,
    READY_MARKER,
    SeedConfig,
    build_meta_data,
    build_network_config,
    build_user_data,
    merge_cloud_config,
    new_instance_id,
    read_seed_iso,
    write_seed_iso,
)

HOST_KEY = generate_ed25519("vm1-host")
USER_KEY = generate_ed25519("ccloudvm").public_openssh


def _cfg(**overrides: Any) -> SeedConfig:
    values: dict[str, Any] = {
        "hostname": "vm1",
        "user_name": "alice",
        "uid": 1234,
        "gid": 2345,
        "home": "/home/alice",
        "authorized_keys": [USER_KEY],
        "host_key": HOST_KEY,
        "mounts": [
            MountSpec(Path("/src"), "/home/alice/src", "mount0"),
            MountSpec(Path("/data"), "/mnt/data dir", "mount1", readonly=True),
        ],
        "chown_mounts": False,
        "extra_user_data": {},
    }
    values.update(overrides)
    return SeedConfig(**values)


def test_iso_volume_id_and_files(tmp_path: Path) -> None:
    iso_path = tmp_path / "seed.iso"
    write_seed_iso(iso_path, _cfg(), "iid-vm1-1")
    assert stat.S_IMODE(iso_path.stat().st_mode) == 0o600  # holds the private host key

    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        assert iso.pvd.volume_identifier.rstrip(b" ") == b"cidata"
        assert iso.has_rock_ridge()
        assert iso.has_joliet()
        joliet = sorted(
            c.file_identifier().decode("utf-16_be")
            for c in iso.list_children(joliet_path="/")
            if not (c.is_dot() or c.is_dotdot())
        )
        assert joliet == ["meta-data", "network-config", "user-data"]
    finally:
        iso.close()

    files = read_seed_iso(iso_path)
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert files["user-data"].startswith("#cloud-config\n")
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "iid-vm1-1",
        "local-hostname": "vm1",
    }
    network = yaml.safe_load(files["network-config"])
    assert network == build_network_config()
    user_data = yaml.safe_load(files["user-data"])
    assert user_data == build_user_data(_cfg())


def test_user_data_user_keys_and_ssh() -> None:
    data = build_user_data(_cfg())
    (user,) = data["users"]
    assert user["name"] == "alice"
    assert user["uid"] == 1234
    assert user["homedir"] == "/home/alice"
    assert user["shell"] == "/bin/bash"
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["ssh_authorized_keys"] == [USER_KEY]
    assert data["disable_root"] is True
    assert data["ssh_pwauth"] is False
    assert data["ssh_deletekeys"] is True
    assert "ssh_genkeytypes" not in data  # ssh_keys alone stops generation; [] fails the schema
    assert data["ssh_keys"] == {
        "ed25519_private": HOST_KEY.private_openssh,
        "ed25519_public": HOST_KEY.public_openssh,
    }
    assert data["hostname"] == data["fqdn"] == "vm1"
    assert data["manage_etc_hosts"] is True
    assert data["final_message"].startswith(READY_MARKER + " ")
    assert data.get("package_update", False) is False


def test_user_and_group_made_with_host_ids_before_mounts() -> None:
    # bootcmd runs before cloud-init's mounts module; the ids travel as arguments.
    group_cmd, user_cmd = build_user_data(_cfg())["bootcmd"]
    assert group_cmd[:2] == ["sh", "-c"]
    assert "groupadd -g" in group_cmd[2]
    assert group_cmd[3:] == ["sh", "2345", "alice"]
    assert "useradd -m" in user_cmd[2]
    assert user_cmd[3:] == ["sh", "alice", "1234", "2345", "/home/alice"]


def test_mounts_entries() -> None:
    data = build_user_data(_cfg())
    assert data["mounts"] == [
        ["mount0", "/home/alice/src", "9p", "trans=virtio,version=9p2000.L,msize=262144,nofail"]
        + ["0", "0"],
        ["mount1", "/mnt/data dir", "9p", "trans=virtio,version=9p2000.L,msize=262144,nofail,ro"]
        + ["0", "0"],
    ]
    assert len(data["mount_default_fields"]) == 6
    assert "runcmd" not in data  # not a root host


def test_no_mounts_no_mount_keys() -> None:
    data = build_user_data(_cfg(mounts=[], chown_mounts=True))
    assert "mounts" not in data
    assert "runcmd" not in data


def test_chown_mounts_on_root_host_only_writable_roots() -> None:
    data = build_user_data(_cfg(chown_mounts=True))
    (cmd,) = data["runcmd"]  # the read-only mount is left alone
    assert cmd[:2] == ["sh", "-c"]
    assert "chown" in cmd[2] and "-R" not in cmd[2]
    assert cmd[3:] == ["sh", "/home/alice/src", "1234:2345"]


def test_merge_rules() -> None:
    base = {"a": 1, "m": {"x": 1, "l": [1], "n": {"deep": "base"}}, "l": [1, 2]}
    extra = {"a": 2, "m": {"y": 2, "l": [3], "n": {"deep": "child"}}, "l": [3], "new": [9]}
    merged = merge_cloud_config(base, extra)
    assert merged == {
        "a": 2,
        "m": {"x": 1, "l": [1, 3], "n": {"deep": "child"}, "y": 2},
        "l": [1, 2, 3],
        "new": [9],
    }
    # Inputs untouched, result shares nothing with them.
    assert base["l"] == [1, 2] and extra["l"] == [3]
    merged["new"].append(10)
    assert extra["new"] == [9]
    # A type change: the child's value wins.
    assert merge_cloud_config({"k": [1]}, {"k": "s"}) == {"k": "s"}


def test_workload_cloud_config_is_merged_but_cannot_break_readiness() -> None:
    extra = {
        "packages": ["git"],
        "runcmd": [["echo", "workload"]],
        "users": [{"name": "other"}],
        "final_message": "done",
        "ssh_keys": {"ed25519_private": "evil"},
        "write_files": [{"path": "/etc/x", "content": "y"}],
    }
    data = build_user_data(_cfg(chown_mounts=True, extra_user_data=extra))
    assert data["packages"] == ["git"]
    assert data["runcmd"][0][4] == "/home/alice/src"  # ours first
    assert data["runcmd"][-1] == ["echo", "workload"]
    assert [u["name"] for u in data["users"]] == ["alice", "other"]
    assert data["final_message"].startswith(READY_MARKER)
    assert data["ssh_keys"]["ed25519_private"] == HOST_KEY.private_openssh
    assert data["write_files"] == [{"path": "/etc/x", "content": "y"}]


def test_network_config_matches_first_nic_by_mac() -> None:
    net = build_network_config()
    assert net["version"] == 2
    ((_, eth),) = net["ethernets"].items()
    assert eth == {"match": {"macaddress": GUEST_MAC}, "dhcp4": True}
    other = build_network_config("52:54:00:aa:bb:cc")
    assert next(iter(other["ethernets"].values()))["match"]["macaddress"] == "52:54:00:aa:bb:cc"


def test_meta_data_and_instance_id() -> None:
    assert build_meta_data(_cfg(), "iid-x") == {"instance-id": "iid-x", "local-hostname": "vm1"}
    a, b = new_instance_id("vm1"), new_instance_id("vm1")
    assert a.startswith("iid-vm1-") and a != b


def test_multiline_host_key_survives_yaml(tmp_path: Path) -> None:
    iso_path = tmp_path / "seed.iso"
    write_seed_iso(iso_path, _cfg(), "iid")
    text = read_seed_iso(iso_path)["user-data"]
    assert "ed25519_private: |" in text  # readable block literal
    assert yaml.safe_load(text)["ssh_keys"]["ed25519_private"] == HOST_KEY.private_openssh


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    iso_path = tmp_path / "seed.iso"
    write_seed_iso(iso_path, _cfg(), "iid-old")
    before = iso_path.read_bytes()

    def fail(self: pycdlib.PyCdlib, fp: io.BytesIO) -> None:
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pycdlib.PyCdlib, "write_fp", fail)
    with pytest.raises(OSError, match="disk full"):
        write_seed_iso(iso_path, _cfg(), "iid-new")
    assert iso_path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]
    monkeypatch.undo()

    write_seed_iso(iso_path, _cfg(hostname="vm2"), "iid-new")
    assert "iid-new" in read_seed_iso(iso_path)["meta-data"]
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]
