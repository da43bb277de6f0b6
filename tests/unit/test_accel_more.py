"""The accelerator choice beyond the cheap checks: the boot probe against a stand-in
qemu-system-x86_64 on PATH, the per-boot cache that `detect` writes and `would_use` only
reads, and the device a user cannot open."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ccloudvm.vm import accel


def _root(tmp_path: Path, *, flags: str = "fpu vmx sse", nested: str = "Y") -> Path:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "dev/kvm").write_text("")
    (root / "proc").mkdir()
    (root / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    (root / "sys/module/kvm_amd/parameters").mkdir(parents=True)
    (root / "sys/module/kvm_amd/parameters/nested").write_text(nested + "\n")
    return root


def _fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    """A qemu-system-x86_64 first on PATH that runs `script` and logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "qemu-args"
    exe = bin_dir / "qemu-system-x86_64"
    exe.write_text(f'#!/bin/sh\necho "$@" > {log}\n{script}\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


def test_a_guest_that_reaches_its_panic_confirms_kvm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _fake_qemu(tmp_path, monkeypatch, "echo 'Kernel panic - not syncing: VFS: Unable'")
    ok, reason = accel.boot_probe(tmp_path / "vmlinuz", timeout=10)
    assert ok and reason.startswith("a test guest booted under KVM in ")
    args = log.read_text().split()
    assert args[:4] == ["-accel", "kvm", "-cpu", "host"]
    assert ["-kernel", str(tmp_path / "vmlinuz")] == args[args.index("-kernel") :][:2]
    assert "-no-reboot" in args


def test_a_guest_that_fails_shows_qemus_own_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_qemu(tmp_path, monkeypatch,
               "echo 'booting'; echo 'qemu-system-x86_64: failed to initialize kvm: No such device'")  # fmt: skip
    ok, reason = accel.boot_probe(tmp_path / "vmlinuz", timeout=10)
    assert not ok
    assert reason == (
        "a test guest failed under KVM: qemu-system-x86_64: failed to initialize kvm: No such device"
    )


def test_a_guest_with_no_output_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_qemu(tmp_path, monkeypatch, "exit 1")
    assert accel.boot_probe(tmp_path / "vmlinuz", timeout=10) == (
        False,
        "a test guest failed under KVM: no output",
    )


def test_a_guest_that_hangs_is_given_up_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_qemu(tmp_path, monkeypatch, "exec sleep 30")
    ok, reason = accel.boot_probe(tmp_path / "vmlinuz", timeout=0.5)
    assert (ok, reason) == (False, "a test guest did not boot under KVM within 0 s")


def test_detect_probes_once_per_host_boot_and_caches_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _root(tmp_path)
    run_dir = tmp_path / "run"
    log = _fake_qemu(tmp_path, monkeypatch, "echo 'Kernel panic'")
    kernel = tmp_path / "vmlinuz"
    first = accel.detect(mode="auto", run_dir=run_dir, probe_kernel=kernel, sys_root=root)
    assert first.accel == "kvm" and first.nested
    assert first.reason.startswith("a test guest booted under KVM")
    cached = json.loads((run_dir / "accel.json").read_text())
    assert cached["kernel"] == str(kernel)
    assert cached["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert cached["result"]["accel"] == "kvm"
    log.unlink()
    again = accel.detect(mode="auto", run_dir=run_dir, probe_kernel=kernel, sys_root=root)
    assert again == first
    assert not log.exists()  # answered from the cache: no second test guest


def test_detect_probes_again_for_another_kernel_and_can_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _root(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "accel.json").write_text(
        json.dumps({"boot_id": accel._boot_id(), "kernel": "/old/vmlinuz",
                    "result": {"accel": "kvm", "nested": True, "reason": "old"}})
    )  # fmt: skip
    _fake_qemu(tmp_path, monkeypatch, "echo 'qemu: kvm hangs'")
    choice = accel.detect(
        mode="auto", run_dir=run_dir, probe_kernel=tmp_path / "vmlinuz", sys_root=root
    )
    assert choice == accel.Acceleration(
        "tcg", False, "a test guest failed under KVM: qemu: kvm hangs"
    )
    assert json.loads((run_dir / "accel.json").read_text())["result"]["accel"] == "tcg"


def test_detect_without_a_kernel_trusts_the_checks_and_ignores_a_broken_cache(
    tmp_path: Path,
) -> None:
    root = _root(tmp_path, nested="N")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "accel.json").write_text("{not json")
    choice = accel.detect(mode="auto", run_dir=run_dir, sys_root=root)
    assert choice == accel.Acceleration("kvm", False, "KVM is available")


def test_would_use_reads_the_cache_of_this_boot_and_writes_nothing(tmp_path: Path) -> None:
    root = _root(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result: dict[str, Any] = {
        "accel": "tcg",
        "nested": False,
        "reason": "a test guest did not boot",
    }
    (run_dir / "accel.json").write_text(json.dumps({"boot_id": accel._boot_id(), "result": result}))
    assert accel.would_use(mode="auto", run_dir=run_dir, sys_root=root) == accel.Acceleration(
        **result
    )


def test_would_use_without_a_cache_says_kvm_is_not_yet_confirmed(tmp_path: Path) -> None:
    root = _root(tmp_path)
    run_dir = tmp_path / "run"
    choice = accel.would_use(mode="auto", run_dir=run_dir, sys_root=root)
    assert choice == accel.Acceleration(
        "kvm", True,
        "KVM is available; not yet confirmed by a test guest (the next boot does that)",
    )  # fmt: skip
    assert not run_dir.exists()


def test_would_use_ignores_the_cache_of_an_earlier_boot(tmp_path: Path) -> None:
    root = _root(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "accel.json").write_text(
        json.dumps({"boot_id": "an-earlier-boot", "result": {"accel": "tcg"}})
    )
    assert accel.would_use(mode="auto", run_dir=run_dir, sys_root=root).accel == "kvm"


def test_would_use_follows_the_user_and_the_cheap_checks(tmp_path: Path) -> None:
    root = _root(tmp_path, flags="fpu sse")
    run_dir = tmp_path / "run"
    assert accel.would_use(mode="tcg", run_dir=run_dir, sys_root=root).reason == (
        "software emulation chosen by the user"
    )
    no_vmx = accel.would_use(mode="auto", run_dir=run_dir, sys_root=root)
    assert no_vmx == accel.Acceleration(
        "tcg", False, "the CPU does not advertise hardware virtualisation (vmx/svm)"
    )
    forced = accel.would_use(mode="kvm", run_dir=run_dir, sys_root=root)
    assert forced.accel == "kvm" and forced.reason.startswith("KVM chosen by the user; the CPU")


def test_a_device_this_user_cannot_open_rules_kvm_out_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _root(tmp_path)
    device = root / "dev/kvm"
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        # The kernel's answer for a user outside the device's group (root always may).
        return False if Path(str(path)) == device else real_access(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)  # the one os module accel asks
    ok, reason = accel.kvm_precheck(root)
    assert not ok
    assert reason.startswith("/dev/kvm is not accessible to this user (")
    assert reason.endswith(f"({accel._kvm_access_hint(device)})")


def test_no_flags_line_means_no_virtualisation(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "proc/cpuinfo").write_text("processor\t: 0\n")
    assert accel.kvm_precheck(root) == (
        False,
        "the CPU does not advertise hardware virtualisation (vmx/svm)",
    )
    (root / "proc/cpuinfo").unlink()  # unreadable cpuinfo: the same answer
    assert not accel.kvm_precheck(root)[0]
