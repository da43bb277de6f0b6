"""The snapshot commands as a user types them, on a stopped instance with a real qcow2
disk (the real qemu-img): save, list (table and JSON), restore, rm; and the one-line
refusals of suspend and resume when there is nothing to suspend or resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ccloudvm.cli import main as cli
from ccloudvm.state.instance_state import ImageRef, InstanceState, files_of, save_state
from ccloudvm.state.paths import StateDir


@pytest.fixture
def stopped(tmp_path: Path) -> StateDir:
    """A stopped instance "dev" with a real (sparse) 1 GiB qcow2 disk."""
    state = StateDir.from_env()
    files = files_of(state, "dev")
    files.dir.mkdir(parents=True)
    inst = InstanceState(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", str(tmp_path / "base")),
        mem_mib=1024, cpus=1, disk_gib=1, host_ip="127.77.0.2", ssh_port=10022,
        guest_user="ccloudvm", desired="stopped",
    )  # fmt: skip
    save_state(files, inst)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", files.disk, "1G"], check=True)
    return state


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, str, str]:
    code: int | str | None = 0
    try:
        cli.main(list(args))
    except SystemExit as exited:
        code = exited.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.usefixtures("stopped")
def test_save_list_restore_rm(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "snapshot", "list", "dev")
    assert (code, out) == (0, "")
    assert err == "dev has no snapshots ('ccloudvm snapshot save dev SNAP' makes one)\n"
    assert _run(capsys, "snapshot", "save", "dev", "before")[0] == 0

    code, out, _ = _run(capsys, "snapshot", "list", "dev")
    header, row = out.splitlines()
    assert header.split() == ["SNAPSHOT", "KEEPS", "CREATED", "MEMORY"]
    assert row.split()[:2] == ["before", "disk"] and row.split()[-1] == "-"
    code, out, _ = _run(capsys, "snapshot", "list", "dev", "--json")
    [listed] = json.loads(out)
    assert (listed["name"], listed["kind"], listed["state_mib"]) == ("before", "disk", 0)

    assert _run(capsys, "snapshot", "restore", "dev")[0] == 0  # the newest
    assert _run(capsys, "snapshot", "rm", "dev", "before")[0] == 0
    assert json.loads(_run(capsys, "snapshot", "list", "dev", "--json")[1]) == []


@pytest.mark.usefixtures("stopped")
def test_suspend_and_resume_of_a_stopped_instance_are_one_line_refusals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _run(capsys, "suspend", "dev")
    assert code == 1 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert "'dev' is not running" in err
    code, _, err = _run(capsys, "resume", "dev")
    assert code == 1 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert "ccloudvm start dev" in err
