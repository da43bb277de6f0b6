"""Choosing QEMU's accelerator: KVM when it really works, TCG otherwise.

/dev/kvm being present is not enough: a paravirtual KVM (kvm_pvm) opens fine but normal
guests hang in it. So KVM is used only when the CPU advertises hardware virtualisation,
no paravirtual KVM module is loaded, and (when a kernel is at hand) a real guest kernel
boots under it within a few seconds. The probe's answer is cached for this boot of the host.
"""

from __future__ import annotations

import grp
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ccloudvm.core import proc
from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.core.proc import require_tool

ENV_ACCEL = "CCLOUDVM_ACCEL"
CHOICES = ("auto", "kvm", "tcg")
PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Acceleration:
    accel: str  # "kvm" or "tcg"
    nested: bool  # KVM inside the guest is possible
    reason: str  # why this was chosen, for `ccloudvm setup` and warnings

    @property
    def is_kvm(self) -> bool:
        return self.accel == "kvm"

    def qemu_args(self, *, nested_wanted: bool) -> list[str]:
        if self.is_kvm:
            # -cpu host passes vmx/svm through, which is what nesting needs.
            return ["-accel", "kvm", "-cpu", "host"]
        del nested_wanted  # nothing to expose under emulation
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def requested_mode(flag: str | None, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    mode = (flag or env.get(ENV_ACCEL) or "auto").lower()
    if mode not in CHOICES:
        raise UsageError(
            f"unknown accelerator {mode!r}",
            hint=f"use one of {', '.join(CHOICES)} (--accel or {ENV_ACCEL})",
        )
    return mode


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def _kvm_access_hint(dev: Path) -> str:
    """How this user gets /dev/kvm on this host: the device's group when it has one."""
    try:
        group = grp.getgrgid(dev.stat().st_gid).gr_name
    except (OSError, KeyError):
        group = ""
    if group and group != "root":
        return f"add yourself to its group: sudo usermod -aG {group} $USER, then log in again"
    return "ask an administrator to give your user read and write access to it"


def kvm_precheck(sys_root: Path = Path("/")) -> tuple[bool, str]:
    """Cheap checks that rule KVM out without starting a guest."""
    dev = sys_root / "dev/kvm"
    if not dev.exists():
        return (
            False,
            "/dev/kvm does not exist (no KVM module loaded, or no hardware virtualisation)",
        )
    if not os.access(dev, os.R_OK | os.W_OK):
        return False, f"/dev/kvm is not accessible to this user ({_kvm_access_hint(dev)})"
    if (sys_root / "sys/module/kvm_pvm").exists():
        return False, "/dev/kvm is a paravirtual KVM (kvm_pvm) in which normal guests hang"
    flags = _cpu_flags(_read(sys_root / "proc/cpuinfo"))
    if not flags & {"vmx", "svm"}:
        return False, "the CPU does not advertise hardware virtualisation (vmx/svm)"
    return True, "KVM is available"


def nested_supported(sys_root: Path = Path("/")) -> bool:
    for module in ("kvm_intel", "kvm_amd"):
        value = _read(sys_root / f"sys/module/{module}/parameters/nested").strip()
        if value in ("Y", "1"):
            return True
    return False


def boot_probe(kernel: Path, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Boot `kernel` under KVM with no root disk: it must reach its panic and exit quickly."""
    qemu = require_tool("qemu-system-x86_64")
    argv = [
        qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-no-user-config",
        "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
    ]  # fmt: skip
    start = time.monotonic()
    try:
        result = proc.run(argv, check=False, timeout=timeout)  # console and QEMU's errors
    except CcloudvmError:  # it did not finish: a guest hung under KVM
        return False, f"a test guest did not boot under KVM within {timeout:.0f} s"
    if "Kernel panic" in result.stdout or "VFS" in result.stdout:
        return True, f"a test guest booted under KVM in {time.monotonic() - start:.1f} s"
    qemu_said = [line for line in result.stdout.splitlines() if "qemu" in line.lower()]
    tail = "\n".join(qemu_said).strip()[-200:] or result.stdout.strip()[-200:]
    return False, "a test guest failed under KVM: " + (tail or "no output")


def _boot_id() -> str:
    return _read(Path("/proc/sys/kernel/random/boot_id")).strip()


def _without_probe(mode: str, sys_root: Path) -> Acceleration | None:
    """The answer when no test guest is needed: TCG or KVM chosen by the user, or KVM
    ruled out by the cheap checks; None when auto mode must ask the probe."""
    if mode == "tcg":
        return Acceleration("tcg", False, "software emulation chosen by the user")
    ok, reason = kvm_precheck(sys_root)
    if mode == "kvm":
        return Acceleration("kvm", nested_supported(sys_root), "KVM chosen by the user; " + reason)
    return None if ok else Acceleration("tcg", False, reason)


def detect(
    *, mode: str, run_dir: Path, probe_kernel: Path | None = None, sys_root: Path = Path("/")
) -> Acceleration:
    """Pick the accelerator for `mode` (auto|kvm|tcg); cache auto's answer per host boot."""
    settled = _without_probe(mode, sys_root)
    if settled is not None:
        return settled
    ok, reason = kvm_precheck(sys_root)  # passed: _without_probe returned None
    cache = run_dir / "accel.json"
    boot_id = _boot_id()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("boot_id") == boot_id and cached.get("kernel") == str(probe_kernel):
            return Acceleration(**cached["result"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if probe_kernel is not None:
        ok, reason = boot_probe(probe_kernel)
    result = Acceleration("kvm" if ok else "tcg", ok and nested_supported(sys_root), reason)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps({"boot_id": boot_id, "kernel": str(probe_kernel), "result": asdict(result)})
    )
    return result


def would_use(*, mode: str, run_dir: Path, sys_root: Path = Path("/")) -> Acceleration:
    """What `detect` would choose for `mode`, without booting a test guest or writing the
    cache: the probe's cached answer of this host boot when there is one, else the cheap
    checks (a first create confirms KVM with a test guest)."""
    settled = _without_probe(mode, sys_root)
    if settled is not None:
        return settled
    reason = kvm_precheck(sys_root)[1]
    try:
        cached = json.loads((run_dir / "accel.json").read_text())
        if cached.get("boot_id") == _boot_id():
            return Acceleration(**cached["result"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Acceleration(
        "kvm",
        nested_supported(sys_root),
        reason + "; not yet confirmed by a test guest (the next boot does that)",
    )
