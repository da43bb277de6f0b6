"""LocalTarget: real commands on this host, streamed output, files, timeouts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ccloudvm.core.errors import CcloudvmError, ToolMissingError
from ccloudvm.remote.local import LocalTarget


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


def test_sudo_runs_as_root_or_says_why() -> None:
    lines: list[str] = []
    try:
        status = LocalTarget().run(["id", "-u"], sudo=True, output=lines.append, timeout=30)
    except ToolMissingError as exc:  # a user on a host without sudo: said, not hung
        assert os.geteuid() != 0 and "sudo" in str(exc)
        return
    if os.geteuid() == 0 or status == 0:
        assert (status, lines) == (0, ["0"])
    else:  # sudo -n never prompts: it fails at once and says why
        assert lines and "sudo" in " ".join(lines)


def test_sudo_for_a_user_is_sudo_n_with_the_env_passed_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user's sudo step is `sudo -n env K=V... ARGV` (never a password prompt; sudo
    # resets the environment, so ours is passed explicitly). A stand-in sudo records it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text('#!/bin/sh\necho "sudo $*"\n[ "$1" = -n ] && shift\nexec "$@"\n')
    (bin_dir / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lines: list[str] = []
    status = LocalTarget().run(
        ["sh", "-c", 'echo "got $GREETING"'], env={"GREETING": "hi"}, sudo=True,
        output=lines.append,
    )  # fmt: skip
    assert status == 0
    assert lines == ['sudo -n env GREETING=hi sh -c echo "got $GREETING"', "got hi"]


def test_sudo_that_wants_a_password_fails_instead_of_prompting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text("#!/bin/sh\necho 'sudo: a password is required'\nexit 1\n")
    (bin_dir / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lines: list[str] = []
    status = LocalTarget().run(["id", "-u"], sudo=True, output=lines.append)
    assert (status, lines) == (1, ["sudo: a password is required"])


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


def test_an_environment_name_that_is_not_an_identifier_is_refused() -> None:
    from ccloudvm.core.errors import UsageError
    from ccloudvm.remote.local import LocalTarget

    with pytest.raises(UsageError, match="is not valid"):
        LocalTarget().run(["true"], env={"A;touch /tmp/x": "1"}, sudo=True)
