"""The local image builder's pieces that run without root or network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ccloudvm import imagebuild, proc
from ccloudvm.errors import CcloudvmError
from ccloudvm.imagebuild import BuildRecipe

RECIPE = {
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "packages": ["linux-image-amd64", "cloud-init", "openssh-server"],
    "initrd_modules": ["virtio_pci", "virtio_blk", "ext4"],
    "services": ["systemd-networkd.service"],
    "files": {"/etc/cloud/cloud.cfg.d/90-ccloudvm.cfg": "datasource_list: [NoCloud, None]\n"},
}


def test_mmdebstrap_argv_is_a_plain_list() -> None:
    argv = imagebuild.mmdebstrap_argv(BuildRecipe.from_mapping(RECIPE))
    assert argv[:3] == ["mmdebstrap", "--mode=root", "--variant=apt"]
    assert "--include=linux-image-amd64,cloud-init,openssh-server" in argv
    assert "--setup-hook=sync-in setup /" in argv
    assert argv[-3:] == ["bookworm", "root", "http://deb.debian.org/debian"]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"packages": ["ok", "--root=/"]}, "invalid entries: --root=/"),
        ({"packages": []}, "non-empty"),
        ({"suite": "bookworm main"}, "suite"),
        ({"mirror": "http://x/ -o Dpkg::x"}, "mirror"),
        ({"initrd_modules": ["ext4 virtio"]}, "invalid entries"),
        ({"files": {"/etc/../../x": "y"}}, "without '..'"),
        ({"size_gib": True}, "size_gib"),
        ({"sizegib": 4}, "unknown key"),
    ],
)
def test_recipe_rejects_unsafe_values(change: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace(".", r"\.").replace("+", r"\+")):
        BuildRecipe.from_mapping({**RECIPE, **change})


def test_setup_tree_makes_a_small_initrd(tmp_path: Path) -> None:
    imagebuild._write_setup_tree(BuildRecipe.from_mapping(RECIPE), tmp_path / "setup")
    conf = tmp_path / "setup/etc/initramfs-tools/conf.d/ccloudvm.conf"
    modules = tmp_path / "setup/usr/share/initramfs-tools/modules.d/ccloudvm"
    assert conf.read_text() == "MODULES=list\n"
    assert modules.read_text().split() == ["virtio_pci", "virtio_blk", "ext4"]
    assert (tmp_path / "setup").stat().st_mode & 0o777 == 0o755


def test_configure_root_writes_files_and_drops_host_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "etc/ssh/sshd_config").write_text("keep")
    (root / "etc/machine-id").write_text("0123456789abcdef\n")
    enabled: list[list[str]] = []
    monkeypatch.setattr(proc, "run", lambda argv, **_: enabled.append(list(map(str, argv))))
    imagebuild.configure_root(BuildRecipe.from_mapping(RECIPE), root)
    assert (root / "etc/fstab").read_text() == "/dev/vda / ext4 defaults 0 1\n"
    cfg = root / "etc/cloud/cloud.cfg.d/90-ccloudvm.cfg"
    assert cfg.read_text() == "datasource_list: [NoCloud, None]\n"
    assert cfg.stat().st_mode & 0o777 == 0o644
    assert not (root / "etc/ssh/ssh_host_ed25519_key").exists()
    assert (root / "etc/ssh/sshd_config").read_text() == "keep"
    assert (root / "etc/machine-id").read_text() == ""
    assert enabled == [["chroot", str(root), "systemctl", "enable", "systemd-networkd.service"]]


def test_guest_files_never_leave_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (root / "etc/cloud").symlink_to(outside)
    with pytest.raises(CcloudvmError, match="symlink"):
        imagebuild.write_guest_file(root, "/etc/cloud/x.cfg", "y")
    assert list(outside.iterdir()) == []
    # A symlink as the file itself is replaced, not written through.
    (root / "etc/resolv.conf").symlink_to(outside / "resolv.conf")
    imagebuild.write_guest_file(root, "/etc/resolv.conf", "nameserver 10.0.2.3\n")
    assert not (root / "etc/resolv.conf").is_symlink()
    assert not (outside / "resolv.conf").exists()


def test_newest_kernel_and_its_initrd_are_picked(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    for version in ("6.1.0-9-amd64", "6.1.0-56-amd64"):
        (boot / f"vmlinuz-{version}").write_text("k")
        (boot / f"initrd.img-{version}").write_text("i")
    kernel, initrd = imagebuild.find_boot_files(tmp_path)
    assert (kernel.name, initrd.name) == ("vmlinuz-6.1.0-56-amd64", "initrd.img-6.1.0-56-amd64")
    (boot / "initrd.img-6.1.0-56-amd64").unlink()
    with pytest.raises(CcloudvmError, match="no initrd"):
        imagebuild.find_boot_files(tmp_path)


def test_building_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(CcloudvmError) as refused:
        imagebuild.build_image(BuildRecipe.from_mapping(RECIPE), tmp_path, name="debian-12")
    assert "need" in str(refused.value) and "root (sudo)" in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_remove_tree_refuses_mounted_trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    (work / "root/proc").mkdir(parents=True)
    mount = str((work / "root/proc").resolve())
    monkeypatch.setattr(imagebuild, "_mount_points", lambda: ["/", "/proc", mount])
    with pytest.raises(CcloudvmError, match="still mounted"):
        imagebuild.remove_tree(work)
    assert work.exists()
    monkeypatch.setattr(imagebuild, "_mount_points", lambda: ["/", "/proc"])
    imagebuild.remove_tree(work)
    assert not work.exists()


def test_mountinfo_escapes_are_decoded() -> None:
    assert imagebuild._unescape(r"/var/tmp/with\040space") == "/var/tmp/with space"
