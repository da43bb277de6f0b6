"""`ccloudvm logs`: the console (its last lines, followed while a create runs), the
provision steps' output, and the one-line errors when a log is not there to show."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from ccloudvm.state.instance_state import InstanceFiles, clear_creating, mark_creating
from tests.unit.test_cli_errors import _make_instance, _one_line_error, ccloudvm


def test_the_console_log_and_its_last_lines() -> None:
    files = _make_instance("dev")
    files.serial.write_text("one\ntwo\nthree\n")
    result = ccloudvm("logs", "dev")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one\ntwo\nthree\n"
    result = ccloudvm("logs", "-n", "2")  # the only instance there is
    assert result.stdout == "two\nthree\n", result.stderr


def test_an_instance_that_never_booted_has_an_empty_console() -> None:
    _make_instance("dev")
    result = ccloudvm("logs", "dev")
    assert result.returncode == 0 and result.stdout == "", result.stderr


def test_the_provision_log_or_how_to_make_one() -> None:
    files = _make_instance("dev")
    _one_line_error(ccloudvm("logs", "dev", "--provision"), 2,
                    "'dev' has no provision log yet", "ccloudvm provision dev")  # fmt: skip
    (files.dir / "provision.log").write_text("step 1\nstep 2\nstep 3\n")
    result = ccloudvm("logs", "dev", "--provision", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "step 3\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cloud-init", "--provision"], "show different logs; give one"),
        (["--follow", "--provision"], "--follow follows the console only"),
        (["--follow", "--cloud-init"], "--follow follows the console only"),
    ],
)
def test_options_that_contradict_each_other(args: list[str], needle: str) -> None:
    _make_instance("dev")
    _one_line_error(ccloudvm("logs", "dev", *args), 2, needle)


def test_cloud_init_log_of_a_stopped_instance_says_how_to_start_it() -> None:
    _make_instance("dev")
    _one_line_error(ccloudvm("logs", "dev", "--cloud-init"), 1, "'dev' is not running",
                    "ccloudvm start dev")  # fmt: skip


def test_follow_on_a_stopped_instance_prints_the_console_and_ends() -> None:
    files = _make_instance("dev")
    files.serial.write_text("a\nb\nc\n")
    result = ccloudvm("logs", "dev", "-f", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "c\n"


def _follow(files: InstanceFiles) -> subprocess.Popen[str]:
    """`ccloudvm logs -f` on an instance whose create (this test's process) is at work."""
    mark_creating(files)
    return subprocess.Popen(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", "logs", "-f", files.dir.name],
        env=dict(os.environ), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _read_until(follower: subprocess.Popen[str], wanted: str, timeout: float = 30) -> str:
    assert follower.stdout is not None
    seen = ""
    with selectors.DefaultSelector() as selector:
        selector.register(follower.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while wanted not in seen and time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = follower.stdout.readline()
                if not line:
                    break
                seen += line
    return seen


def test_follow_prints_a_create_console_as_it_grows_until_the_create_ends() -> None:
    files = _make_instance("dev")
    files.state.unlink()  # as while a create runs: no state file yet, the console empty
    follower = _follow(files)
    try:
        time.sleep(0.5)
        files.serial.write_text("booting\n")  # the VM starts writing its console
        assert "booting" in _read_until(follower, "booting")
        with files.serial.open("a") as console:
            console.write("login:\n")
        assert "login:" in _read_until(follower, "login:")
        with files.serial.open("a") as console:
            console.write("last words\n")
        clear_creating(files)  # the create is over: the rest is printed, then it ends
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
        follower.wait()
    assert follower.returncode == 0, err
    assert out.endswith("last words\n")


def test_follow_ends_on_sigterm_with_one_line_and_its_status() -> None:
    files = _make_instance("dev")
    files.serial.write_text("booting\n")
    follower = _follow(files)
    try:
        assert "booting" in _read_until(follower, "booting")
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
        follower.wait()
        clear_creating(files)
    assert follower.returncode == 128 + signal.SIGTERM
    assert err.strip() == "interrupted"
