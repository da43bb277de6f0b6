"""The cluster commands' command line: options only where they mean something."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def ccloudvm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", *args],
        env={**os.environ, "CCLOUDVM_HOME": str(tmp_path / "home")},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_setup_offers_no_isolation(tmp_path: Path) -> None:
    result = ccloudvm(tmp_path, "baremetal", "setup", "--help")
    assert result.returncode == 0
    assert "--no-isolation" in result.stdout


@pytest.mark.parametrize("action", ["verify", "bat", "cleanup", "env"])
def test_only_setup_chooses_the_mode(action: str, tmp_path: Path) -> None:
    """The other commands follow the running cluster's mode: the option is not offered."""
    assert "--no-isolation" not in ccloudvm(tmp_path, "baremetal", action, "--help").stdout
    bad = ccloudvm(tmp_path, "baremetal", action, "--no-isolation", "debian")
    assert bad.returncode == 2
    assert "No such option '--no-isolation'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "home" / "clusters").exists()
