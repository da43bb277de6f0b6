"""LocalTarget: real commands on this host, streamed output, files, timeouts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ccloudvm.errors import CcloudvmError
from ccloudvm.local_target import LocalTarget


def test_run_streams_lines_and_returns_the_status(tmp_path: Path) -> None:
    lines: list[str] = []
    status = LocalTarget().run(
        ["bash", "-c", 'echo one; echo "two $GREETING" >&2; exit 3'],
        env={"GREETING": "hi"},
        output=lines.append,
    )
    assert status == 3
    assert lines == ["one", "two hi"]


def test_run_keeps_the_rest_of_the_environment() -> None:
    lines: list[str] = []
    LocalTarget().run(["sh", "-c", "echo $PATH"], env={"X": "1"}, output=lines.append)
    assert lines == [os.environ["PATH"]]


def test_sudo_runs_as_root() -> None:
    lines: list[str] = []
    status = LocalTarget().run(["id", "-u"], sudo=True, output=lines.append)
    if os.geteuid() == 0:
        assert (status, lines) == (0, ["0"])
    else:  # sudo -n never prompts: it either works or says why
        assert status == 0 and lines == ["0"] or status != 0


def test_timeout_kills_and_says_so() -> None:
    with pytest.raises(CcloudvmError, match="did not finish within 1 s"):
        LocalTarget().run(["sleep", "30"], timeout=1)


def test_put_text_and_put_file_set_mode(tmp_path: Path) -> None:
    target = LocalTarget()
    script = tmp_path / "sub" / "s.sh"
    target.put_text("echo hi\n", str(script), mode=0o700)
    assert script.read_text() == "echo hi\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o700
    copy = tmp_path / "other" / "copy"
    target.put_file(script, str(copy), mode=0o640)
    assert copy.read_text() == "echo hi\n"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o640
