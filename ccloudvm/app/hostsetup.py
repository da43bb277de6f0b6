"""`ccloudvm setup`: what the host needs, installing what is missing, and its acceleration."""

from __future__ import annotations

import os
import shutil
from typing import Any

from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError
from ccloudvm.core.proc import PACKAGE_OF, find_program, run
from ccloudvm.images import build as imagebuild
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import accel
from ccloudvm.vm.libvirt_driver import LIBVIRT_INSTALL, libvirt_problem

# Programs ccloudvm runs, and what each is for (shown in the report).
NEEDED = {
    "qemu-system-x86_64": "runs the VMs",
    "qemu-img": "makes instance disks",
    "ssh": "interactive sessions (ccloudvm connect)",
    "mmdebstrap": "builds Debian images locally",
    "mkfs.ext4": "builds Debian images locally",
    "unshare": "builds images without root (a user namespace)",
    "newuidmap": "builds images without root (subordinate user ids)",
    "newgidmap": "builds images without root (subordinate group ids)",
    "ip": "cluster networks",
    "dnsmasq": "DHCP for cluster networks",
}


_PACKAGES = {**PACKAGE_OF, **imagebuild.USERNS_TOOLS}


def missing_programs() -> list[str]:
    return [name for name in NEEDED if find_program(name) is None]


def _install(packages: list[str]) -> None:
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo"):
        prefix = ["sudo", "-n"]
    else:
        raise CcloudvmError(
            "cannot install packages without root",
            hint="run as root: apt-get install -y " + " ".join(packages),
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with ui.step("Updating the package lists"):
        run([*prefix, "apt-get", "update", "-q"], env=env, timeout=600)
    with ui.step("Installing " + " ".join(packages)):
        run([*prefix, "apt-get", "install", "-y", "-q", *packages], env=env, timeout=1800)


def setup(state: StateDir, *, install: bool) -> dict[str, Any]:
    state.ensure()
    missing = missing_programs()
    if missing and install:
        if shutil.which("apt-get") is None:
            raise CcloudvmError(
                "missing: " + ", ".join(missing),
                hint="install them with your distribution's package manager",
            )
        _install(sorted({_PACKAGES.get(m, m) for m in missing}))
        missing = missing_programs()
    for name, purpose in NEEDED.items():
        mark = "missing" if name in missing else "ok"
        ui.info(f"{name:20} {mark:8} {purpose}")
    subids = subid_report()
    libvirt = libvirt_report()
    acc = accel.detect(mode=accel.requested_mode(None), run_dir=state.run)
    ui.info(
        f"acceleration: {acc.accel.upper()}"
        + (" with nesting" if acc.nested else "")
        + f" ({acc.reason})"
    )
    if not acc.is_kvm:
        ui.warn(
            "VMs will run under software emulation (TCG): a create takes about 10 s from a "
            "warm-boot snapshot, 20-60 s cold, and work inside the VM is several times slower"
        )
    return {
        "missing": missing,
        "accel": acc.accel,
        "nested": acc.nested,
        "reason": acc.reason,
        "subids": subids,
        "libvirt": libvirt,
        "state_dir": str(state.root),
    }


def subid_report() -> str | None:
    """Say whether this user has the subordinate ids a build without root maps; the
    problem, or None. Root builds directly and needs none."""
    if os.geteuid() == 0:
        ui.info(f"{'/etc/subuid':20} {'ok':8} not needed: root builds images directly")
        return None
    problem = imagebuild.subid_problem()
    if problem is not None:
        message, hint = problem
        ui.warn(f"{message}: images cannot be built without root; {hint}")
        return message
    ui.info(f"{'/etc/subuid':20} {'ok':8} subordinate ids for building images without root")
    if all(find_program(tool) for tool in imagebuild.USERNS_TOOLS):
        blocked = imagebuild.userns_problem()
        if blocked is not None:
            ui.warn(f"{blocked}: images cannot be built without root; {imagebuild.USERNS_HINT}")
            return blocked
    return None


def libvirt_report() -> str | None:
    """Say whether the libvirt driver is usable; the problem, or None."""
    problem = libvirt_problem()
    if problem is None:
        ui.info(f"{'libvirt':20} {'ok':8} the libvirt driver (create --driver libvirt)")
        return None
    ui.info(f"{'libvirt':20} {'no':8} optional, for --driver libvirt: {problem}")
    ui.info(f"{'':20} {'':8} to use it, {LIBVIRT_INSTALL}")
    return problem
