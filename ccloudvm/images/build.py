"""Build a bootable Debian disk locally from Debian's packages, with mmdebstrap.

mmdebstrap installs the recipe's packages into a directory; the recipe's files are
written into it; mkfs.ext4 -d turns the tree into a file system with no partition table
(the guest boots with root=/dev/vda), and qemu-img compresses it to qcow2. The kernel
and initrd are copied out for direct kernel boot, so no boot loader is needed. The
initrd carries only the modules the recipe names, which keeps boot fast.

No root is needed and no loop device is mounted. An ordinary user builds inside a user
namespace (`unshare --map-auto --map-root-user`): root there is the user, and uids 1-65535
there are the user's subordinate ids from /etc/subuid. So mmdebstrap (its unshare mode),
chroot and mkfs.ext4 -d see the tree's true owners, the files root owns in the tree (all
but a few group ids) belong to the user on the host, every file written outside the tree
belongs to the user, and the tree is removed from inside the namespace too. Nothing owned
by another uid stays behind. Root builds directly (mmdebstrap's root mode).

Every program is started through ccloudvm.core.proc with an argv list; recipe values never
reach a shell.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ccloudvm.core import diskspace, proc, ui
from ccloudvm.core.errors import CcloudvmError, ToolMissingError
from ccloudvm.images.recipe import RECIPE_FORMAT as RECIPE_FORMAT
from ccloudvm.images.recipe import BuildRecipe as BuildRecipe
from ccloudvm.images.recipe import _guest_path

MMDEBSTRAP_TIMEOUT = 3600.0
# Peak use of a build (root tree + raw disk + qcow2): 1.8 GiB measured for debian-12.
# A lower bound, checked up front rather than filling the disk half-way.
BUILD_NEEDS_BYTES = 2 << 30
SETUP_TREE = "setup"  # relative to the work directory: mmdebstrap's cwd
ROOT_TREE = "root"

# Rootless builds: the namespace maps uid 0 to the user and 1-65535 to the first range of
# the user's subordinate ids, which must cover Debian's system ids (nobody is 65534).
SUBUID_FILE = Path("/etc/subuid")
SUBGID_FILE = Path("/etc/subgid")
SUBIDS_NEEDED = 65536
USERNS_TOOLS = {"unshare": "util-linux", "newuidmap": "uidmap", "newgidmap": "uidmap"}


def build_image(recipe: BuildRecipe, out_dir: Path, *, name: str = "image") -> None:
    """Build `recipe` into out_dir/{disk.qcow2, vmlinuz, initrd.img}.

    The large intermediate files (the root tree, the raw disk) live in a work
    directory inside `out_dir` that is removed at the end, whatever happens.
    """
    for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img", "chroot"):
        proc.require_tool(tool)
    if rootless():
        check_rootless(name)
    diskspace.check_free_space(out_dir, BUILD_NEEDS_BYTES)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=out_dir))
    try:
        with diskspace.reporting_full_disk(out_dir, BUILD_NEEDS_BYTES):
            _build_in(recipe, work, out_dir)
    except BaseException:
        try:
            remove_tree(work)
        except CcloudvmError as exc:  # never hide the error that got us here
            ui.warn(str(exc))
        raise
    remove_tree(work)


def _build_in(recipe: BuildRecipe, work: Path, out_dir: Path) -> None:
    root = work / ROOT_TREE
    _write_setup_tree(recipe, work / SETUP_TREE)
    how = " in a user namespace (no root)" if rootless() else ""
    with ui.step(f"Installing {recipe.suite} packages with mmdebstrap{how}"):
        argv = mmdebstrap_argv(recipe, rootless=rootless())
        argv[0] = proc.require_tool(argv[0])
        proc.run(as_namespace_root(argv), cwd=work, timeout=MMDEBSTRAP_TIMEOUT)
    with ui.step("Configuring the root file system"):
        configure_root(recipe, root)
        kernel, initrd = find_boot_files(root)
        shutil.copyfile(kernel, out_dir / "vmlinuz")
        shutil.copyfile(initrd, out_dir / "initrd.img")
    raw = work / "disk.raw"
    with ui.step(f"Creating a {recipe.size_gib} GiB ext4 file system"):
        with raw.open("wb") as handle:
            handle.truncate(recipe.size_gib << 30)  # sparse
        mkfs = proc.require_tool("mkfs.ext4")
        # In the namespace, mkfs reads the tree's true owners (0, 42, ...), not the host's.
        proc.run(as_namespace_root([mkfs, "-q", "-F", "-L", "rootfs", "-d", root, raw]))
    with ui.step("Compressing the disk to qcow2"):
        remove_tree(root)  # before the qcow2 is written: less disk at the peak
        proc.run(["qemu-img", "convert", "-c", "-O", "qcow2", raw, out_dir / "disk.qcow2"])


def mmdebstrap_argv(recipe: BuildRecipe, *, rootless: bool = False) -> list[str]:
    """The mmdebstrap command, run with the work directory as cwd (hook paths are relative).

    Rootless, it runs as root of the build's user namespace (as_namespace_root), where
    mmdebstrap's unshare mode only adds the mount and pid namespaces it needs.
    """
    argv = [
        "mmdebstrap",
        "--mode=unshare" if rootless else "--mode=root",
        "--variant=apt",
        "--include=" + ",".join(recipe.packages),
        # Before any package is installed, so the kernel's initrd is built small at once.
        f"--setup-hook=sync-in {SETUP_TREE} /",
        recipe.suite,
        ROOT_TREE,
    ]
    if recipe.mirror:
        argv.append(recipe.mirror)
    return argv


def rootless() -> bool:
    return os.geteuid() != 0


def as_namespace_root(argv: Sequence[str | Path]) -> list[str | Path]:
    """`argv` run as root of a user namespace whose root is the calling user and whose uids
    1-65535 are the user's subordinate ids; unchanged when we are root already.

    Programs inside get the PATH as it is: give them as full paths (sbin may be missing).
    """
    if not rootless():
        return list(argv)
    return ["unshare", "--user", "--map-auto", "--map-root-user", "--", *argv]


def check_rootless(name: str = "image") -> None:
    """Raise, with the fix, when this user cannot build in a user namespace."""
    for tool, package in USERNS_TOOLS.items():
        if proc.find_program(tool) is None:
            raise ToolMissingError(
                f"building image {name} without root needs {tool}, which is not installed",
                hint=f"run 'ccloudvm setup' or 'sudo apt-get install {package}'",
            )
    problem = subid_problem()
    if problem is not None:
        message, hint = problem
        raise CcloudvmError(f"building image {name} without root: {message}", hint=hint)
    blocked = userns_problem()
    if blocked is not None:
        raise CcloudvmError(f"building image {name} without root: {blocked}", hint=USERNS_HINT)


USERNS_HINT = (
    "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 on older "
    "Debian kernels, kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu)"
)


def userns_problem() -> str | None:
    """Why the build's user namespace cannot be made here (tried: a few ms), or None."""
    probe = proc.run(as_namespace_root([proc.require_tool("true")]), check=False)
    if probe.returncode == 0:
        return None
    said = (probe.stdout or "").strip().splitlines()
    return "this host lets no user namespace be made" + (f" ({said[-1]})" if said else "")


def subid_problem(uid: int | None = None) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) when the user lacks the subordinate ids a rootless
    build maps, else None. Like unshare --map-auto: the user's first range in each file."""
    uid = os.getuid() if uid is None else uid
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    for path, kind in ((SUBUID_FILE, "uids"), (SUBGID_FILE, "gids")):
        ranges = _subid_ranges(path)
        mine = [(start, count) for owner, start, count in ranges if owner in (user, str(uid))]
        if mine and mine[0][1] >= SUBIDS_NEEDED:
            continue
        # After every range in use, as useradd picks them.
        first = max([start + count for _, start, count in ranges] + [100000])
        span = f"{first}-{first + SUBIDS_NEEDED - 1}"
        found = f"only {mine[0][1]}" if mine else "none"
        return (
            f"{path} gives {user} no range of {SUBIDS_NEEDED} subordinate {kind} ({found})",
            f"add one: sudo usermod --add-subuids {span} --add-subgids {span} {user}",
        )
    return None


def _subid_ranges(path: Path) -> list[tuple[str, int, int]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            ranges.append((fields[0], int(fields[1]), int(fields[2])))
    return ranges


def _write_setup_tree(recipe: BuildRecipe, tree: Path) -> None:
    """Files that must be in place before the packages install (initramfs settings)."""
    if not recipe.initrd_modules:
        tree.mkdir(mode=0o755)
        return
    conf = tree / "etc/initramfs-tools/conf.d/ccloudvm.conf"
    modules = tree / "usr/share/initramfs-tools/modules.d/ccloudvm"
    for path, text in (
        (conf, "MODULES=list\n"),
        (modules, "\n".join(recipe.initrd_modules) + "\n"),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
    for directory in [tree, *(p for p in tree.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)  # sync-in copies modes: the chroot's / must stay 0755


def configure_root(recipe: BuildRecipe, root: Path) -> None:
    """Finish the installed tree: fstab, the recipe's files, services, no shared host keys."""
    write_guest_file(root, "/etc/fstab", "/dev/vda / ext4 defaults 0 1\n")
    for path, text in recipe.files.items():
        write_guest_file(root, path, text)
    chroot = proc.require_tool("chroot")
    for unit in recipe.services:
        proc.run(as_namespace_root([chroot, root, "systemctl", "enable", unit]))
    for unit in recipe.masked:
        proc.run(as_namespace_root([chroot, root, "systemctl", "mask", unit]))
    # Each VM must get its own SSH host keys (cloud-init makes them on first boot).
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    machine_id = root / "etc/machine-id"
    if machine_id.exists():
        machine_id.write_text("")  # empty: systemd makes a fresh one on first boot


def write_guest_file(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` inside `root`, refusing paths that leave the tree."""
    pure = _guest_path(path)
    target = root.joinpath(*pure.parts[1:])
    current = root
    for part in pure.parts[1:-1]:
        current = current / part
        if current.is_symlink():
            raise CcloudvmError(f"cannot write {path} in the image: {current} is a symlink")
        current.mkdir(mode=0o755, exist_ok=True)
    try:
        if target.is_symlink():
            target.unlink()  # replace the link itself, never write through it
        target.write_text(text)
        target.chmod(mode)
    except PermissionError as exc:  # rootless: a folder of another system user in the tree
        raise CcloudvmError(
            f"cannot write {path} in the image: {exc.strerror}",
            hint="recipe files can go where root owns the folder (/etc, /usr, ...)",
        ) from exc


def find_boot_files(root: Path) -> tuple[Path, Path]:
    """The newest kernel in /boot and its initrd."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name))
    if not kernels:
        raise CcloudvmError("the built image has no kernel in /boot", hint="add linux-image-amd64")
    kernel = kernels[-1]
    initrd = root / "boot" / ("initrd.img-" + kernel.name.removeprefix("vmlinuz-"))
    if not initrd.is_file():
        raise CcloudvmError(f"no initrd for {kernel.name}", hint="add initramfs-tools")
    return kernel, initrd


def _version_key(name: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", name)]


def remove_tree(path: Path) -> None:
    """rmtree, but never into a file system still mounted below `path` (chroot /proc, /dev).

    What a rootless build's namespace made (files of its subordinate ids, in folders the
    user may not write) is removed from inside such a namespace. Raises if anything is left.
    """
    if not path.exists() and not path.is_symlink():
        return
    prefix = str(path.resolve()) + "/"
    mounted = [m for m in _mount_points() if m.startswith(prefix)]
    if mounted:
        raise CcloudvmError(
            f"cannot remove {path}: {mounted[0]} is still mounted",
            hint=f"unmount it (umount -R {mounted[0]}) and remove {path} by hand",
        )
    shutil.rmtree(path, ignore_errors=True)
    if path.is_dir() and not path.is_symlink() and rootless():
        rm = proc.require_tool("rm")
        proc.run(as_namespace_root([rm, "-rf", "--one-file-system", "--", path]), check=False)
    if path.exists() or path.is_symlink():
        blocker = removal_blocker(path) or path
        raise CcloudvmError(
            f"cannot remove all of {path}: {blocker} is not ours to delete",
            hint=f"remove it by hand: sudo rm -rf {path}",
        )


def removal_blocker(path: Path) -> Path | None:
    """The first folder, `path`'s parent or one inside it, whose entries this process may
    not delete (or list), or None when all of `path` can be removed."""

    def blocked(folder: Path, mode: int = os.R_OK | os.W_OK | os.X_OK) -> bool:
        return not os.access(folder, mode)

    if blocked(path.parent, os.W_OK | os.X_OK):
        return path.parent
    pending = [path] if path.is_dir() and not path.is_symlink() else []
    while pending:
        folder = pending.pop()
        if blocked(folder):
            return folder
        try:
            with os.scandir(folder) as entries:
                pending.extend(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            return folder
    return None


def _mount_points() -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    # Field 5 is the mount point, with spaces and such escaped as octal.
    return [_unescape(line.split()[4]) for line in lines if len(line.split()) > 4]


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
