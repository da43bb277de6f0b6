"""The locally built Debian image boots cleanly: systemd, networking, cloud-init, sshd.

Boots the cached image (built once by the session fixture) without a seed ISO under
QEMU, reads the serial console and checks that nothing failed on the way. This guards
the recipe (packages, initrd modules, cloud-init settings) against regressions.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from ccloudvm import images

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 240.0
DONE = re.compile(r"Cloud-init v\. \S+ finished at")


def test_built_image_has_boot_files(built_image: images.BaseImage) -> None:
    assert built_image.kind == "built"
    assert built_image.kernel is not None and built_image.kernel.stat().st_size > 1 << 20
    assert built_image.initrd is not None
    assert built_image.initrd.stat().st_size < 20 << 20  # the small, module-list initrd
    assert built_image.disk.read_bytes()[:4] == b"QFI\xfb"


def test_built_image_boots_without_failures(built_image: images.BaseImage, tmp_path: Path) -> None:
    assert built_image.kernel is not None and built_image.initrd is not None
    serial = tmp_path / "serial.log"
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{serial}",
        "-kernel", str(built_image.kernel),
        "-initrd", str(built_image.initrd),
        "-append", f"{built_image.cmdline} panic=-1",
        "-drive", f"file={built_image.disk},if=virtio,snapshot=on",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        text = ""
        while time.monotonic() < deadline and qemu.poll() is None:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if DONE.search(text):
                break
            time.sleep(1)
        assert DONE.search(text), f"cloud-init did not finish; serial tail:\n{text[-3000:]}"
    finally:
        qemu.kill()
        qemu.wait(timeout=30)
    assert "Welcome to" in text and "Debian GNU/Linux 12" in text
    assert "Reached target" in text and "multi-user.target" in text
    assert re.search(r"ci-info: \|\s+\w+\s+\| True \|\s+10\.0\.2\.15 ", text), "no DHCP address"
    assert "Started ssh.service" in text or "OpenBSD Secure Shell server" in text
    expected = "Used fallback datasource"  # no seed ISO in this test
    problems = [
        line
        for line in text.splitlines()
        if ("FAILED" in line or "[WARNING]" in line) and expected not in line
    ]
    assert problems == []
