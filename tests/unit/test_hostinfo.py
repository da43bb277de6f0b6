"""The share of the host a VM gets by default, and who the guest user is."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccloudvm.core.errors import CcloudvmError
from ccloudvm.core.hostinfo import HostUser, host_resources

MEMINFO = """MemTotal:       {kib} kB
MemFree:         1234567 kB
MemAvailable:   20000000 kB
SwapTotal:             0 kB
"""


def _meminfo(tmp_path: Path, kib: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO.format(kib=kib))
    return path


@pytest.mark.parametrize(
    ("cpus", "mem_kib", "default_cpus", "default_mem"),
    [
        (2, 24684084, 1, 8192),  # this machine: 2 cores, 24 GiB -> the memory cap
        (1, 4 * 1024 * 1024, 1, 2048),  # a small laptop: at least one CPU, half the memory
        (8, 16 * 1024 * 1024, 4, 8192),  # half of each
        (64, 256 * 1024 * 1024, 8, 8192),  # a big workstation: both caps
        (4, 1536 * 1024, 2, 1024),  # 1.5 GiB: the 1 GiB floor
        (2, 768 * 1024, 1, 768),  # under 1 GiB: never more than the host has
    ],
)  # fmt: skip
def test_a_vm_gets_half_the_host_within_caps(
    tmp_path: Path, cpus: int, mem_kib: int, default_cpus: int, default_mem: int
) -> None:
    host = host_resources(cpus=cpus, meminfo=_meminfo(tmp_path, mem_kib))
    assert (host.cpus, host.mem_mib) == (cpus, mem_kib // 1024)
    assert host.default_cpus() == default_cpus
    assert host.default_mem_mib() == default_mem


def test_memory_is_read_from_memtotal_wherever_it_is(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    path.write_text("MemFree: 1 kB\nMemTotal:  2097152 kB\n")
    assert host_resources(cpus=2, meminfo=path).mem_mib == 2048


def test_unreadable_memory_size_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "meminfo"
    empty.write_text("MemFree: 1 kB\n")
    with pytest.raises(CcloudvmError, match="no MemTotal in"):
        host_resources(cpus=2, meminfo=empty)
    with pytest.raises(CcloudvmError, match="cannot read the host's memory size from"):
        host_resources(cpus=2, meminfo=tmp_path / "missing")


def _user(uid: int) -> HostUser:
    name = "root" if uid == 0 else "alice"
    return HostUser(name=name, uid=uid, gid=uid, group=name, home=Path("/home/x"),
                    gopath=Path("/home/x/go"), git_name="", git_email="")  # fmt: skip


def test_an_ordinary_host_user_is_the_guest_user() -> None:
    user = _user(1234)
    assert (user.guest_name, user.guest_uid, user.guest_gid) == ("alice", 1234, 1234)
    assert user.guest_home == "/home/alice"


def test_a_root_host_user_gets_an_ordinary_guest_user_not_root() -> None:
    user = _user(0)
    assert user.is_root
    assert (user.guest_name, user.guest_uid, user.guest_gid) == ("ccloudvm", 1000, 1000)
    assert user.guest_home == "/home/ccloudvm"


@pytest.mark.parametrize(
    ("cpus", "mem_kib", "default_cpus", "default_mem"),
    [
        (2, 24684084, 2, 2048),  # this machine under TCG: both cores, 2 GiB
        (1, 4 * 1024 * 1024, 1, 2048),
        (8, 16 * 1024 * 1024, 4, 2048),  # the TCG caps
        (4, 1536 * 1024, 4, 1024),  # the 1 GiB floor
        (2, 768 * 1024, 2, 768),  # never more than the host has
    ],
)  # fmt: skip
def test_under_tcg_a_vm_gets_the_host_cpus_up_to_4_and_at_most_2_gib(
    tmp_path: Path, cpus: int, mem_kib: int, default_cpus: int, default_mem: int
) -> None:
    host = host_resources(cpus=cpus, meminfo=_meminfo(tmp_path, mem_kib))
    assert host.default_cpus(kvm=False) == default_cpus
    assert host.default_mem_mib(kvm=False) == default_mem
