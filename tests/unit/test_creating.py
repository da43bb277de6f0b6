"""A create in progress is visible (issue 10 item 9): listed as creating from its first
second, as failed once its process is gone without a ready guest; its console can be
followed before the file exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ccloudvm.core import logfollow
from ccloudvm.core import pids as process
from ccloudvm.state.instance_state import (
    clear_creating,
    creating_names,
    creation,
    files_of,
    mark_creating,
)
from ccloudvm.state.paths import StateDir


def _folder(state: StateDir, name: str) -> Path:
    folder = state.instance_dir(name)
    folder.mkdir(parents=True)
    return folder


def test_this_process_creating_then_done(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    files = files_of(state, "new")
    _folder(state, "new")
    assert creation(files) is None
    mark_creating(files)
    assert creation(files) == "creating" and creating_names(state) == ["new"]
    clear_creating(files)
    assert creation(files) is None and creating_names(state) == []


def test_a_dead_or_reused_pid_is_a_failed_create(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    files = files_of(state, "gone")
    _folder(state, "gone")
    files.creating.write_text(json.dumps({"pid": 2**22 + 7, "start": 1}))  # beyond pid_max
    assert creation(files) == "failed"
    # our own pid, but another start time: the creator died and its pid was reused
    files.creating.write_text(json.dumps({"pid": os.getpid(), "start": -1}))
    assert creation(files) == "failed"
    files.creating.write_text("{damaged")
    assert creation(files) == "failed"


def _ccloudvm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", *args],
        env={**os.environ, "CCLOUDVM_HOME": str(home)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_instances_and_status_show_a_create_before_its_state_file(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    files = files_of(state, "early")
    _folder(state, "early")
    creator = subprocess.Popen(["sleep", "60"])  # noqa: S607 - stands in for a create
    try:
        start = process.start_ticks(creator.pid)
        files.creating.write_text(json.dumps({"pid": creator.pid, "start": start}))
        listing = json.loads(_ccloudvm(tmp_path, "instances", "--json").stdout)
        assert [(r["name"], r["state"]) for r in listing] == [("early", "creating")]
        status = _ccloudvm(tmp_path, "status", "early")
        assert status.returncode == 0 and "creating" in status.stdout, status.stderr
    finally:
        creator.kill()
        creator.wait()
    listing = json.loads(_ccloudvm(tmp_path, "instances", "--json").stdout)
    assert [(r["name"], r["state"]) for r in listing] == [("early", "failed")]
    assert _ccloudvm(tmp_path, "delete", "early").returncode == 0
    assert not files.dir.exists()


def test_follow_waits_for_the_file_and_prints_what_is_added(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "serial.log"
    running = threading.Event()
    running.set()

    def guest() -> None:
        time.sleep(0.3)
        log.write_text("first line\n")
        time.sleep(0.3)
        with log.open("a") as handle:
            handle.write("READY\n")
        running.clear()

    writer = threading.Thread(target=guest)
    writer.start()
    logfollow.follow(log, 0, running.is_set)
    writer.join()
    assert capsys.readouterr().out == "first line\nREADY\n"
