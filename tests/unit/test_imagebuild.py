"""The local image builder's pieces that run without root or network."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ccloudvm.core import diskspace, proc
from ccloudvm.core.errors import CcloudvmError
from ccloudvm.images import build as imagebuild
from ccloudvm.images import catalog as images
from ccloudvm.images.build import BuildRecipe

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
    rootless = imagebuild.mmdebstrap_argv(BuildRecipe.from_mapping(RECIPE), rootless=True)
    assert rootless[:2] == ["mmdebstrap", "--mode=unshare"] and rootless[2:] == argv[2:]


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
    monkeypatch.setattr(proc, "require_tool", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    imagebuild.configure_root(BuildRecipe.from_mapping(RECIPE), root)
    assert (root / "etc/fstab").read_text() == "/dev/vda / ext4 defaults 0 1\n"
    cfg = root / "etc/cloud/cloud.cfg.d/90-ccloudvm.cfg"
    assert cfg.read_text() == "datasource_list: [NoCloud, None]\n"
    assert cfg.stat().st_mode & 0o777 == 0o644
    assert not (root / "etc/ssh/ssh_host_ed25519_key").exists()
    assert (root / "etc/ssh/sshd_config").read_text() == "keep"
    assert (root / "etc/machine-id").read_text() == ""
    assert enabled == [
        ["/usr/sbin/chroot", str(root), "systemctl", "enable", "systemd-networkd.service"]
    ]


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


USERNS = ["unshare", "--user", "--map-auto", "--map-root-user", "--"]


class FakeHost:
    """The outside world of a build: programs recorded, mmdebstrap making a small tree."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, uid: int, subids: Path) -> None:
        self.calls: list[list[str]] = []
        self.returncode, self.output = 0, ""
        monkeypatch.setattr(os, "geteuid", lambda: uid)
        monkeypatch.setattr(os, "getuid", lambda: uid)
        monkeypatch.setattr(proc, "find_program", lambda name: f"/usr/bin/{name}")
        monkeypatch.setattr(proc, "require_tool", lambda name: f"/usr/bin/{Path(name).name}")
        monkeypatch.setattr(proc, "run", self.run)
        monkeypatch.setattr(diskspace, "check_free_space", lambda *_: None)
        for name in ("subuid", "subgid"):
            (subids / name).write_text(f"someone:100000:65536\n{uid}:165536:65536\n")
        monkeypatch.setattr(imagebuild, "SUBUID_FILE", subids / "subuid")
        monkeypatch.setattr(imagebuild, "SUBGID_FILE", subids / "subgid")

    def run(
        self, argv: list[object], cwd: Path | None = None, **_: object
    ) -> subprocess.CompletedProcess[str]:
        args = [str(a) for a in argv]
        self.calls.append(args)
        done = subprocess.CompletedProcess(args, self.returncode, self.output, None)
        program = args[len(USERNS)] if args[: len(USERNS)] == USERNS else args[0]
        if program.endswith("mmdebstrap"):
            assert cwd is not None
            root = cwd / args[-2]
            (root / "boot").mkdir(parents=True)
            (root / "boot/vmlinuz-6.1.0-50-amd64").write_text("kernel")
            (root / "boot/initrd.img-6.1.0-50-amd64").write_text("initrd")
        elif program.endswith("qemu-img"):
            Path(args[-1]).write_text("qcow2")
        return done

    def programs(self) -> list[str]:
        """Each call's program, with 'userns ' in front when it ran in the namespace."""
        return [
            "userns " + Path(a[len(USERNS)]).name if a[: len(USERNS)] == USERNS else Path(a[0]).name
            for a in self.calls
        ]


def test_a_user_builds_in_a_user_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    host = FakeHost(monkeypatch, 1000, tmp_path)
    imagebuild.build_image(BuildRecipe.from_mapping(RECIPE), out, name="debian-12")
    # mmdebstrap, chroot and mkfs run as the namespace's root; the tree is gone (rmtree
    # could delete it here, so no rm in the namespace was needed).
    assert host.programs() == [
        "userns true", "userns mmdebstrap", "userns chroot", "userns mkfs.ext4", "qemu-img",
    ]  # fmt: skip
    mmdebstrap = host.calls[1][len(USERNS) :]
    assert mmdebstrap[:2] == ["/usr/bin/mmdebstrap", "--mode=unshare"]
    mkfs = host.calls[3][len(USERNS) :]
    assert mkfs[0] == "/usr/bin/mkfs.ext4" and mkfs[-3] == "-d"
    assert mkfs[-2].endswith("/root") and mkfs[-1].endswith("/disk.raw")
    assert not list(out.glob(".work-*"))
    assert sorted(p.name for p in out.iterdir()) == ["disk.qcow2", "initrd.img", "vmlinuz"]


def test_root_builds_without_a_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch, 0, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    imagebuild.build_image(BuildRecipe.from_mapping(RECIPE), out, name="debian-12")
    assert host.programs() == ["mmdebstrap", "chroot", "mkfs.ext4", "qemu-img"]
    assert host.calls[0][1] == "--mode=root"


def test_a_user_without_subordinate_ids_is_told_how_to_add_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = FakeHost(monkeypatch, 1000, tmp_path)
    (tmp_path / "subgid").write_text("someone:100000:65536\n1000:165536:1000\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CcloudvmError) as refused:
        imagebuild.build_image(BuildRecipe.from_mapping(RECIPE), out, name="debian-12")
    message = str(refused.value)
    assert "without root" in message and "subordinate gids (only 1000)" in message
    assert "sudo usermod --add-subuids 166536-232071 --add-subgids 166536-232071" in message
    assert host.calls == [] and list(out.iterdir()) == []


def test_a_user_without_newuidmap_is_told_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeHost(monkeypatch, 1000, tmp_path)
    monkeypatch.setattr(proc, "find_program", lambda name: None if "map" in name else name)
    with pytest.raises(CcloudvmError, match="apt-get install uidmap"):
        imagebuild.check_rootless("debian-12")


def test_a_host_without_user_namespaces_is_said_before_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = FakeHost(monkeypatch, 1000, tmp_path)
    host.returncode, host.output = (
        1,
        "unshare: write failed /proc/self/uid_map: Operation not permitted\n",
    )
    with pytest.raises(CcloudvmError) as refused:
        imagebuild.check_rootless("debian-12")
    assert "lets no user namespace be made (unshare: write failed" in str(refused.value)
    assert "apparmor_restrict_unprivileged_userns" in str(refused.value)
    assert host.programs() == ["userns true"]


def test_subid_ranges_may_name_the_user_or_the_uid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text("# comment\nroot:100000:65536\n")
    monkeypatch.setattr(imagebuild, "SUBUID_FILE", tmp_path / "subuid")
    monkeypatch.setattr(imagebuild, "SUBGID_FILE", tmp_path / "subgid")
    assert imagebuild.subid_problem(0) is None  # by name (root is uid 0 everywhere)
    problem = imagebuild.subid_problem(54321)
    assert problem is not None and "(none)" in problem[0] and "165536-231071" in problem[1]
    (tmp_path / "subuid").write_text("54321:200000:65536\n")
    (tmp_path / "subgid").write_text("54321:200000:65536\n")
    assert imagebuild.subid_problem(54321) is None


def test_a_failed_build_removes_its_work_and_keeps_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = FakeHost(monkeypatch, 1000, tmp_path)

    def failing(argv: list[object], **kwargs: object) -> subprocess.CompletedProcess[str]:
        done = host.run(argv, **kwargs)  # type: ignore[arg-type]
        if str(argv[-1]).endswith(".raw"):
            raise CcloudvmError("mkfs.ext4 failed")
        return done

    monkeypatch.setattr(proc, "run", failing)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CcloudvmError, match="mkfs.ext4 failed"):
        imagebuild.build_image(BuildRecipe.from_mapping(RECIPE), out, name="debian-12")
    assert not list(out.glob(".work-*"))


def test_rootless_remove_tree_deletes_the_rest_in_the_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What rmtree leaves (files of subordinate ids) goes with rm -rf in the namespace."""
    tree = tmp_path / "work"
    (tree / "root/var/cache/man").mkdir(parents=True)
    real_rmtree = shutil.rmtree
    calls: list[list[str]] = []
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(proc, "require_tool", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(shutil, "rmtree", lambda *_a, **_k: None)  # "denied"

    def run(argv: list[object], **_: object) -> None:
        calls.append([str(a) for a in argv])
        real_rmtree(tree)

    monkeypatch.setattr(proc, "run", run)
    imagebuild.remove_tree(tree)
    assert calls == [[*USERNS, "/usr/bin/rm", "-rf", "--one-file-system", "--", str(tree)]]
    assert not tree.exists()
    # Still there afterwards: said, with the fix.
    (tree / "x").mkdir(parents=True)
    monkeypatch.setattr(proc, "run", lambda *_a, **_k: None)
    with pytest.raises(CcloudvmError, match="cannot remove all of"):
        imagebuild.remove_tree(tree)


def test_removal_blocker_finds_a_folder_we_may_not_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "image"
    (tree / "sub/deeper").mkdir(parents=True)
    (tree / "sub/deeper/vmlinuz").write_text("k")
    (tree / "link").symlink_to("/")  # never followed
    assert imagebuild.removal_blocker(tree) is None
    denied = {str(tree / "sub/deeper")}
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: str(path) not in denied and real_access(path, mode)
    )
    assert imagebuild.removal_blocker(tree) == tree / "sub/deeper"
    denied = {str(tmp_path)}
    assert imagebuild.removal_blocker(tree) == tmp_path


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


# images.remove_image (its all-or-nothing removal uses removal_blocker and remove_tree).


def _cached_image(cache: Path) -> images.BaseImage:
    directory = cache / "images/debian-12-0123456789abcdef"
    (directory).mkdir(parents=True)
    for name in ("disk.qcow2", "vmlinuz", "initrd.img", "image.json"):
        (directory / name).write_text(name)
    warm = cache / "warm" / directory.name / "2x1024"
    warm.mkdir(parents=True)
    (warm / "state.qcow2").write_text("snapshot")
    return images.BaseImage(
        name="debian-12",
        key="0123456789abcdef",
        directory=directory,
        disk=directory / "disk.qcow2",
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        cmdline=None,
        kind="built",
    )


def test_remove_image_removes_the_image_and_its_snapshots(tmp_path: Path) -> None:
    image = _cached_image(tmp_path)
    images.remove_image(image)
    assert not image.directory.exists()
    assert not (tmp_path / "warm" / image.directory.name).exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_remove_image_touches_nothing_when_a_file_cannot_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As after `sudo ccloudvm image build`: the image folder is not the user's."""
    image = _cached_image(tmp_path)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != image.directory and real_access(path, mode)
    )
    with pytest.raises(CcloudvmError) as refused:
        images.remove_image(image)
    assert "nothing was removed" in str(refused.value) and "sudo" in str(refused.value)
    assert (tmp_path / "warm" / image.directory.name / "2x1024/state.qcow2").exists()
    assert (image.directory / "vmlinuz").exists()


def test_remove_image_undoes_the_first_rename_when_the_second_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _cached_image(tmp_path)
    real_rename = os.rename
    renames: list[str] = []

    def rename(src: Path, dst: Path) -> None:
        renames.append(str(src))
        if len(renames) == 2:
            raise OSError(16, "Device or resource busy")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(CcloudvmError, match="busy; nothing was removed"):
        images.remove_image(image)
    assert (image.directory / "vmlinuz").exists()
    assert (tmp_path / "warm" / image.directory.name / "2x1024/state.qcow2").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_guest_file_the_user_may_not_write_is_said_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "var/lib/polkit-1").mkdir(parents=True)

    def denied(self: Path, text: str) -> int:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", denied)
    with pytest.raises(CcloudvmError, match="cannot write /var/lib/polkit-1/x in the image"):
        imagebuild.write_guest_file(tmp_path, "/var/lib/polkit-1/x", "y")
