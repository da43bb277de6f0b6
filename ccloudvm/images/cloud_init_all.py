"""Run cloud-init's four boot stages in one Python process.

Under software emulation every Python start-up costs seconds, and the stock units
start cloud-init four times. The stages, their order and their once-per-instance
and every-boot rules are cloud-init's own; this only saves the start-ups and lets
the local stage run while the network comes up.

Warm boot: when the seed disk is still blank, the host is taking a snapshot of this
boot to start instances from. Then everything the stages need is imported first, a
marker goes to the console, and the stages wait until a restored instance finds its
own seed on that disk.

This file runs in the guest, not in ccloudvm: the debian-12 recipe installs it as
/usr/lib/ccloudvm/cloud-init-all (ccloudvm-cloud-init.service starts it with the
guest's python3). So it imports nothing of ccloudvm, only the standard library and
cloud-init.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import mmap
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

WAITING_MARKER = "CCLOUDVM-WARM-WAITING"  # ccloudvm.vm.warmboot.WAITING_MARKER
RESULT_MARKER = "CCLOUDVM-RESULT"  # ccloudvm.vm.ready.RESULT_MARKER
BLKFLSBUF = 0x1261
SEED_DEVICES = "/dev/vd[b-z]"
RESULT_FILE = "/run/cloud-init/result.json"
WAIT_ONLINE = "/lib/systemd/systemd-networkd-wait-online"

CloudInit = Callable[[list[str]], object]
"""cloud-init's own entry point (cloudinit.cmd.main.main): argv in, failure status out."""


def _has_seed(device: str) -> bool:
    """Whether `device` holds a NoCloud ISO (volume id cidata); read past the page cache."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    try:
        block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
        os.preadv(fd, [block], 32768)  # the ISO 9660 primary volume descriptor
        return block[1:6] == b"CD001" and block[40:72].rstrip(b" ").lower() == b"cidata"
    finally:
        os.close(fd)


def _seed_device() -> str | None:
    for device in sorted(glob.glob(SEED_DEVICES)):
        if _has_seed(device):
            return device
    return None


def _preload() -> None:
    """Import what the stages will import, so a restored instance starts with it loaded."""
    import importlib

    from cloudinit import stages
    from cloudinit.config import schema

    for name in (
        "cloudinit.sources.DataSourceNoCloud",
        "cloudinit.sources.DataSourceNone",
        "cloudinit.distros.debian",
    ):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    cfg = stages.Init().cfg
    for key in ("cloud_init_modules", "cloud_config_modules", "cloud_final_modules"):
        for entry in cfg.get(key) or []:
            name = entry if isinstance(entry, str) else entry[0]
            # A module that fails to import fails later, as in a cold boot.
            with contextlib.suppress(Exception):
                importlib.import_module("cloudinit.config.cc_" + name.replace("-", "_"))
    schema.get_schema()


def _wait_online(timeout: int) -> None:
    subprocess.run([WAIT_ONLINE, "--any", f"--timeout={timeout}"], check=False)


def _settle() -> None:
    """Wait until the rest of the boot is done, so a restored instance's cloud-init
    has the CPUs to itself: the network up, no systemd job running but this one."""
    _wait_online(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = subprocess.run(
            ["systemctl", "list-jobs", "--no-legend", "--no-pager"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines()
        running = [j for j in jobs if j.split()[-1:] == ["running"]]
        if all("ccloudvm-cloud-init.service" in j for j in running):
            return
        time.sleep(0.2)


def _wait_for_restore() -> None:
    _preload()
    _settle()
    os.sync()
    print(WAITING_MARKER, flush=True)
    while True:
        device = _seed_device()
        if device:
            break
        time.sleep(0.05)
    # The blank seed's blocks may still be cached; the restored disk has other ones.
    fd = os.open(device, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    finally:
        os.close(fd)
    # The clock stood still in the snapshot; the RTC follows the host's.
    with open("/sys/class/rtc/rtc0/since_epoch") as rtc:
        time.clock_settime(time.CLOCK_REALTIME, float(rtc.read()))


def _notify_ready() -> None:
    """Tell systemd the unit has started, so the units after it (sshd) start now."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.connect("\0" + path[1:] if path.startswith("@") else path)
        notify.sendall(b"READY=1")


def _print_result(unit_out: int) -> None:
    """cloud-init's result on the console, so the host need not fetch it over SSH."""
    try:
        with open(RESULT_FILE) as result:
            text = json.dumps(json.load(result), separators=(",", ":"))
    except (OSError, ValueError):
        return
    sys.stdout.flush()
    os.dup2(unit_out, 1)  # the console, not the last stage's tee
    print(f"{RESULT_MARKER} {text}", flush=True)


def run_stages(cloud_init: CloudInit, unit_outputs: Sequence[int]) -> int:
    """The four stages in cloud-init's order; the exit status: 1 if any failed.

    Each stage points stdout and stderr at a new `tee -a cloud-init-output.log`; in one
    process the tees would chain and stage N's lines be logged N times. Every stage
    starts from the unit's own outputs (`unit_outputs`, copies of fds 1 and 2) instead.
    """
    unit_out, unit_err = unit_outputs

    def stage(*args: str) -> bool:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(unit_out, 1)
        os.dup2(unit_err, 2)
        return bool(cloud_init(["cloud-init", *args]))

    try:
        failed = stage("init", "--local")
        # The network stage and modules (packages, runcmd) need the NIC up.
        _wait_online(120)
        failed = stage("init") or failed
    finally:
        _notify_ready()
    for args in (["modules", "--mode=config"], ["modules", "--mode=final"]):
        failed = stage(*args) or failed
    _print_result(unit_out)
    return 1 if failed else 0


def main() -> int:
    os.environ.setdefault("TZ", ":/etc/localtime")
    from cloudinit.cmd.main import main as cloud_init

    unit_outputs = os.dup(1), os.dup(2)
    if _seed_device() is None:
        _wait_for_restore()
    return run_stages(cloud_init, unit_outputs)


if __name__ == "__main__":
    sys.exit(main())
