"""Finding and ending an instance's QEMU by its pid file, with real child processes.

A fake QEMU is a real `sleep` whose argv[0] reads like QEMU's command line for the
instance, which is all /proc/PID/cmdline shows of it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ccloudvm.core import pids as process

Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    children: list[subprocess.Popen[bytes]] = []

    def start(argv0: str, *, ignore_sigterm: bool = False) -> subprocess.Popen[bytes]:
        def ignore() -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # kept across exec

        child = subprocess.Popen(  # noqa: S603 - fixed argv
            [argv0, "300"],
            executable=shutil.which("sleep"),
            stdin=subprocess.DEVNULL,
            preexec_fn=ignore if ignore_sigterm else None,
        )
        children.append(child)
        # Popen may return while the child is still inside exec(), its command line not
        # yet readable; QEMU writes its pid file only later, so wait for the same here.
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{child.pid}/cmdline").read_bytes().startswith(argv0.encode()):
            assert time.monotonic() < deadline, "the child process did not start"
            time.sleep(0.01)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(10)


def _qemu_argv0(instance_dir: Path) -> str:
    return f"qemu-system-x86_64 -name dev -pidfile {instance_dir}/qemu.pid"


def _instance(tmp_path: Path, name: str = "dev") -> tuple[Path, Path]:
    directory = tmp_path / "instances" / name
    directory.mkdir(parents=True)
    return directory, directory / "qemu.pid"


def test_the_running_qemu_of_the_instance_is_found(tmp_path: Path, spawn: Spawn) -> None:
    directory, pidfile = _instance(tmp_path)
    qemu = spawn(_qemu_argv0(directory))
    pidfile.write_text(f"{qemu.pid}\n")
    assert process.running_pid(pidfile, directory) == qemu.pid


@pytest.mark.parametrize("content", [None, "", "not a pid\n"])
def test_no_or_unreadable_pid_file_means_not_running(tmp_path: Path, content: str | None) -> None:
    directory, pidfile = _instance(tmp_path)
    if content is not None:
        pidfile.write_text(content)
    assert process.running_pid(pidfile, directory) is None


def test_a_stale_pid_file_means_not_running(tmp_path: Path, spawn: Spawn) -> None:
    directory, pidfile = _instance(tmp_path)
    qemu = spawn(_qemu_argv0(directory))
    pidfile.write_text(f"{qemu.pid}\n")
    qemu.kill()
    qemu.wait(10)
    assert process.running_pid(pidfile, directory) is None


def test_a_pid_reused_by_another_program_is_not_ours_and_is_not_killed(
    tmp_path: Path, spawn: Spawn
) -> None:
    directory, pidfile = _instance(tmp_path)
    other = spawn("sleep")
    pidfile.write_text(f"{other.pid}\n")
    assert process.running_pid(pidfile, directory) is None
    process.kill(other.pid, directory)
    assert other.poll() is None


def test_the_qemu_of_an_instance_whose_name_extends_ours_is_not_ours(
    tmp_path: Path, spawn: Spawn
) -> None:
    directory, pidfile = _instance(tmp_path, "dev")
    neighbour, _ = _instance(tmp_path, "dev2")
    theirs = spawn(_qemu_argv0(neighbour))
    pidfile.write_text(f"{theirs.pid}\n")  # our QEMU died and dev2's got its pid
    assert process.running_pid(pidfile, directory) is None
    process.kill(theirs.pid, directory)
    assert theirs.poll() is None


def test_wait_gone_follows_the_process(tmp_path: Path, spawn: Spawn) -> None:
    directory, _ = _instance(tmp_path)
    qemu = spawn(_qemu_argv0(directory))
    assert not process.wait_gone(qemu.pid, directory, 0.3)
    qemu.terminate()  # not reaped yet: a zombie is gone too
    assert process.wait_gone(qemu.pid, directory, 10)


def test_kill_ends_qemu_with_sigterm(tmp_path: Path, spawn: Spawn) -> None:
    directory, _ = _instance(tmp_path)
    qemu = spawn(_qemu_argv0(directory))
    process.kill(qemu.pid, directory)
    assert qemu.wait(10) == -signal.SIGTERM


def test_kill_ends_a_qemu_that_ignores_sigterm_with_sigkill(tmp_path: Path, spawn: Spawn) -> None:
    directory, _ = _instance(tmp_path)
    qemu = spawn(_qemu_argv0(directory), ignore_sigterm=True)
    process.kill(qemu.pid, directory)
    assert qemu.wait(10) == -signal.SIGKILL
