"""The locally built Debian image has what direct kernel boot needs. That it boots
cleanly (no failed unit, no cloud-init error) is checked by test_lifecycle.py, on the
same image, with a seed, so no extra VM boots here."""

from __future__ import annotations

import pytest

from ccloudvm.images import catalog as images

pytestmark = pytest.mark.e2e


def test_built_image_has_boot_files(built_image: images.BaseImage) -> None:
    assert built_image.kind == "built"
    assert built_image.kernel is not None and built_image.kernel.stat().st_size > 1 << 20
    assert built_image.initrd is not None
    assert built_image.initrd.stat().st_size < 20 << 20  # the small, module-list initrd
    assert built_image.disk.read_bytes()[:4] == b"QFI\xfb"
