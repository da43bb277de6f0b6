from __future__ import annotations

import grp
import os
from pathlib import Path

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.vm import accel


def _fake_root(
    tmp_path: Path,
    *,
    kvm: bool = True,
    flags: str = "fpu vmx sse",
    pvm: bool = False,
    nested: str | None = None,
) -> Path:
    (tmp_path / "dev").mkdir()
    if kvm:
        (tmp_path / "dev/kvm").write_text("")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    if pvm:
        (tmp_path / "sys/module/kvm_pvm").mkdir(parents=True)
    if nested is not None:
        (tmp_path / "sys/module/kvm_intel/parameters").mkdir(parents=True)
        (tmp_path / "sys/module/kvm_intel/parameters/nested").write_text(nested + "\n")
    return tmp_path


def test_no_dev_kvm_means_tcg(tmp_path: Path) -> None:
    ok, reason = accel.kvm_precheck(_fake_root(tmp_path, kvm=False))
    assert not ok and "/dev/kvm does not exist" in reason


def test_paravirtual_kvm_is_refused(tmp_path: Path) -> None:
    ok, reason = accel.kvm_precheck(_fake_root(tmp_path, pvm=True))
    assert not ok and "kvm_pvm" in reason


def test_cpu_without_vmx_or_svm_is_refused(tmp_path: Path) -> None:
    ok, reason = accel.kvm_precheck(_fake_root(tmp_path, flags="fpu sse"))
    assert not ok and "vmx/svm" in reason


def test_hardware_kvm_passes_precheck_and_reports_nesting(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, nested="Y")
    assert accel.kvm_precheck(root)[0]
    assert accel.nested_supported(root)


def test_auto_falls_back_to_tcg_with_reason(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, pvm=True)
    choice = accel.detect(mode="auto", run_dir=tmp_path / "run", sys_root=root)
    assert choice.accel == "tcg"
    assert "kvm_pvm" in choice.reason
    assert choice.qemu_args(nested_wanted=False)[:2] == ["-accel", "tcg,thread=multi"]


def test_user_choices_win(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, pvm=True)
    assert accel.detect(mode="tcg", run_dir=tmp_path, sys_root=root).accel == "tcg"
    forced = accel.detect(mode="kvm", run_dir=tmp_path, sys_root=root)
    assert forced.accel == "kvm"
    assert forced.qemu_args(nested_wanted=True) == ["-accel", "kvm", "-cpu", "host"]


def test_requested_mode_from_flag_env_and_default() -> None:
    assert accel.requested_mode(None, {}) == "auto"
    assert accel.requested_mode(None, {"CCLOUDVM_ACCEL": "TCG"}) == "tcg"
    assert accel.requested_mode("kvm", {"CCLOUDVM_ACCEL": "tcg"}) == "kvm"
    with pytest.raises(UsageError, match="unknown accelerator"):
        accel.requested_mode(None, {"CCLOUDVM_ACCEL": "xen"})


def test_this_kind_of_host_gets_tcg_without_a_boot_probe(tmp_path: Path) -> None:
    # The facts of this machine (machine-facts.md): /dev/kvm exists and opens, kvm_pvm is
    # loaded, the CPU flags show a hypervisor and no vmx/svm. Auto must pick TCG from these
    # alone: the probe kernel given does not exist, so a boot probe would fail differently.
    root = _fake_root(tmp_path, flags="fpu sse hypervisor", pvm=True)
    choice = accel.detect(
        mode="auto", run_dir=tmp_path / "run", probe_kernel=tmp_path / "no-vmlinuz", sys_root=root
    )
    assert choice == accel.Acceleration(
        "tcg", False, "/dev/kvm is a paravirtual KVM (kvm_pvm) in which normal guests hang"
    )
    assert not (tmp_path / "run/accel.json").exists()  # nothing cached: nothing was probed
    assert choice.qemu_args(nested_wanted=True) == ["-accel", "tcg,thread=multi", "-cpu", "max"]


def test_kvm_access_hint_names_the_device_group_or_an_administrator(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    group = grp.getgrgid(os.getgid()).gr_name
    hint = accel._kvm_access_hint(device)
    if group == "root":
        # A root-owned device with no group of its own: no group to join on this host.
        assert hint == "ask an administrator to give your user read and write access to it"
    else:
        assert f"sudo usermod -aG {group} $USER" in hint
    if os.geteuid() == 0:
        users = grp.getgrnam("users")
        os.chown(device, 0, users.gr_gid)
        assert accel._kvm_access_hint(device) == (
            "add yourself to its group: sudo usermod -aG users $USER, then log in again"
        )
