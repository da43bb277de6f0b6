"""Facts about the host and its user, read once and passed around (never at import time)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from ccloudvm.core import proc
from ccloudvm.core.errors import CcloudvmError

# When the host user is root (CI, containers), the guest gets this ordinary user instead
# of logging in as the guest's root.
ROOT_HOST_GUEST_USER = "ccloudvm"
ROOT_HOST_GUEST_UID = 1000


@dataclass(frozen=True)
class HostUser:
    name: str
    uid: int
    gid: int
    group: str
    home: Path
    gopath: Path
    git_name: str
    git_email: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def guest_name(self) -> str:
        return ROOT_HOST_GUEST_USER if self.is_root else self.name

    @property
    def guest_uid(self) -> int:
        return ROOT_HOST_GUEST_UID if self.is_root else self.uid

    @property
    def guest_gid(self) -> int:
        return ROOT_HOST_GUEST_UID if self.is_root else self.gid

    @property
    def guest_home(self) -> str:
        return f"/home/{self.guest_name}"


def _git_config(key: str) -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    result = proc.run([git, "config", "--global", "--get", key], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def host_user() -> HostUser:
    uid = os.getuid()
    entry = pwd.getpwuid(uid)
    gid = os.getgid()
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = entry.pw_name
    home = Path(os.environ.get("HOME") or entry.pw_dir)
    gopath = Path(os.environ.get("GOPATH") or home / "go")
    return HostUser(
        name=entry.pw_name,
        uid=uid,
        gid=gid,
        group=group,
        home=home,
        gopath=gopath,
        git_name=_git_config("user.name"),
        git_email=_git_config("user.email"),
    )


@dataclass(frozen=True)
class HostResources:
    cpus: int
    mem_mib: int

    def default_cpus(self, kvm: bool = True) -> int:
        """Under KVM half the host's CPUs (1-8): the host keeps the rest. Under TCG every
        host CPU up to 4: multi-threaded TCG keeps each vCPU on a host thread, and the
        guest's boot is CPU-bound, so idle host cores are time lost."""
        if not kvm:
            return max(1, min(4, self.cpus))
        return max(1, min(8, self.cpus // 2))

    def default_mem_mib(self, kvm: bool = True) -> int:
        """Under KVM half the host's memory (1-8 GiB); under TCG at most 2 GiB, since a
        warm-boot snapshot's time and size grow with memory (8 GiB: 83 s, 370 MiB).
        Never more than the host has (a host of less than 1 GiB)."""
        cap = 8192 if kvm else 2048
        return min(self.mem_mib, max(1024, min(cap, self.mem_mib // 2)))


def host_resources(cpus: int | None = None, meminfo: Path = Path("/proc/meminfo")) -> HostResources:
    """This host's CPUs and memory; `cpus` and `meminfo` stand in for the host's own."""
    try:
        text = meminfo.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise CcloudvmError(f"cannot read the host's memory size from {meminfo}: {exc}") from exc
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "MemTotal:" and fields[1].isdigit():
            mem_kib = int(fields[1])
            break
    else:
        raise CcloudvmError(f"cannot read the host's memory size: no MemTotal in {meminfo}")
    if cpus is None:
        cpus = os.cpu_count() or 1
    return HostResources(cpus=cpus, mem_mib=mem_kib // 1024)
