"""Snapshots and suspend on a real VM (QEMU under TCG here, KVM where it works), one boot.

snapshot save -> change a file, stop a guest server -> restore: the file is back, the
server answers on its forwarded port again, the 9p share is mounted, SSH works. Then
suspend -> QEMU gone, state "suspended" -> resume: a process started before still runs
and the guest's clock is right. Refusals leave the instance as it was: a missing
snapshot, a busy instance, a resume after QEMU changed. start resumes a suspended
instance, stop discards its state, and a stopped one is snapshotted disk only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI
from tests.e2e.conftest import qemu_pids as _qemu_pids

pytestmark = pytest.mark.e2e

NAME = "e2e-snap"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _one_line_error(result, code: int, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert result.code == code, result.err
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.err


def _state(cli: CLI) -> str:
    return str(json.loads(cli("status", NAME, "--json").out)["state"])


def _clock_is_right(cli: CLI) -> None:
    before = time.time()
    guest = float(cli("run", NAME, "--", "date", "+%s.%N").out)
    after = time.time()
    assert before - 1.5 <= guest <= after + 1.5, (before, guest, after)


def test_snapshots_and_suspend(cli: CLI, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "from-host.txt").write_text("hello from the host\n")
    port = _free_port()
    cli("create", "debian", "--name", NAME, "--mem", "1024", "--cpus", "2", "--disk", "8",
        "--mount", f"{shared}:/mnt/shared", "--port", f"{port}:8000")  # fmt: skip
    instance_dir = cli.home / "instances" / NAME

    # A guest server on the forwarded port and a long process, both started before.
    cli("run", NAME, "--", "sh", "-c",
        "echo before > ~/marker && echo page > /tmp/page.txt && cd /tmp && "
        "setsid python3 -m http.server 8000 >/dev/null 2>&1 </dev/null & "
        "setsid sleep 1000 >/dev/null 2>&1 </dev/null & echo $! > /tmp/sleep.pid; sync")  # fmt: skip
    url = f"http://127.0.0.1:{port}/page.txt"
    deadline = time.monotonic() + 60
    while True:
        try:
            assert urllib.request.urlopen(url, timeout=5).read() == b"page\n"  # noqa: S310
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)

    # ---- snapshot of the running instance: memory and disk
    saved = cli("snapshot", "save", NAME, "s1")
    assert "memory and disk" in saved.err, saved.err
    assert _state(cli) == "running"
    assert "hello from the host" in cli("run", NAME, "--", "cat", "/mnt/shared/from-host.txt").out
    cli("run", NAME, "--", "sh", "-c",
        "echo after > ~/marker && echo new > ~/new.txt && pkill -f 'http[.]server'; sync")  # fmt: skip

    restored = cli("snapshot", "restore", NAME, "s1")
    assert "restored to snapshot s1" in restored.err, restored.err
    assert cli("run", NAME, "--", "cat", "marker").out == "before\n"
    assert cli("run", NAME, "--", "test", "-e", "new.txt", check=False).code == 1
    assert urllib.request.urlopen(url, timeout=10).read() == b"page\n"  # noqa: S310
    assert "hello from the host" in cli("run", NAME, "--", "cat", "/mnt/shared/from-host.txt").out
    _clock_is_right(cli)

    # ---- refusals: one line, the instance as it was
    _one_line_error(cli("snapshot", "restore", NAME, "nope", check=False), 2,
                    f"'{NAME}' has no snapshot 'nope'")  # fmt: skip
    fd = os.open(instance_dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another command at work on the instance
        busy = cli("snapshot", "save", NAME, "s2", check=False, timeout=30)
        _one_line_error(busy, 1, f"another ccloudvm command is still working on '{NAME}'")
    finally:
        os.close(fd)
    assert not (instance_dir / "snapshots" / "s2").exists()

    # ---- suspend: QEMU gone; resume: the same processes, the right time
    sleep_pid = cli("run", NAME, "--", "cat", "/tmp/sleep.pid").out.strip()
    cli("suspend", NAME)
    assert _state(cli) == "suspended"
    assert not _qemu_pids(instance_dir), "a suspended instance must have no QEMU"
    time.sleep(20)  # long enough for a clock that was not corrected to be visibly wrong
    cli("resume", NAME)
    assert _state(cli) == "running"
    assert cli("run", NAME, "--", "ps", "-o", "args=", "-p", sleep_pid).out.strip() == "sleep 1000"
    _clock_is_right(cli)
    assert "hello from the host" in cli("run", NAME, "--", "cat", "/mnt/shared/from-host.txt").out

    # A resume after QEMU changed is refused and the instance stays suspended;
    # with QEMU as it was, start resumes it.
    cli("suspend", NAME)
    record = instance_dir / "suspended" / "suspend.json"
    original = record.read_text()
    changed = json.loads(original)
    changed["fingerprint"]["qemu"] = "QEMU emulator version 1.0.0"
    record.write_text(json.dumps(changed))
    _one_line_error(cli("resume", NAME, check=False), 1,
                    f"cannot resume '{NAME}': QEMU changed since it was suspended")  # fmt: skip
    assert _state(cli) == "suspended" and not _qemu_pids(instance_dir)
    record.write_text(original)
    assert "resuming it" in cli("start", NAME).err
    assert cli("run", NAME, "--", "ps", "-o", "args=", "-p", sleep_pid).out.strip() == "sleep 1000"

    # stop of a suspended instance discards its state; a stopped one is snapshotted disk only
    cli("suspend", NAME)
    cli("stop", NAME)
    assert _state(cli) == "stopped" and not (instance_dir / "suspended").exists()
    assert "disk only" in cli("snapshot", "save", NAME, "cold").err
    rows = json.loads(cli("snapshot", "list", NAME, "--json").out)
    assert [(r["name"], r["kind"]) for r in rows] == [("s1", "memory+disk"), ("cold", "disk")]
    cli("snapshot", "rm", NAME, "s1")
    assert [r["name"] for r in json.loads(cli("snapshot", "list", NAME, "--json").out)] == ["cold"]

    # The snapshots go with the instance.
    cli("delete", NAME)
    assert not instance_dir.exists() and not _qemu_pids(instance_dir)
