"""The image commands as a user sees them: the `images` table, and build, snapshot, save,
rm, prune and `build` on a cache that holds what a user would have (no image is built)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ccloudvm.cli import main as cli
from ccloudvm.images import catalog as images
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import warmboot
from tests.support.cache import cached_image
from tests.unit.test_cli_errors import _make_instance


@pytest.fixture
def state() -> StateDir:
    return StateDir(Path(os.environ["CCLOUDVM_HOME"]))


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, str, str]:
    """`ccloudvm ARGS` in this process: its exit status, stdout and stderr."""
    code: int | str | None = 0
    try:
        cli.main(list(args))
    except SystemExit as exited:
        code = exited.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _warm_snapshot(state: StateDir, image: Path, shape: str, size: int) -> None:
    folder = warmboot.snapshots_dir(state) / image.name / shape
    folder.mkdir(parents=True)
    (folder / warmboot.META).write_text("{}")
    (folder / "state.bin").write_bytes(b"\0" * size)


def test_images_table_shows_cached_images_and_definitions_not_fetched(
    state: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = cached_image(state, "mine", "saved", "aaaa")
    _warm_snapshot(state, mine, "1024m-1c", 3 * 2**20)
    _warm_snapshot(state, mine, "2048m-2c", 2**20)
    code, out, err = _run(capsys, "images")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SIZE", "WARM", "CREATED", "IN", "USE", "KEY"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    # Its disk is a few bytes (no size shown); two warm-boot snapshots of 4 MiB together.
    assert rows["mine"][:6] == ["mine", "saved", "-", "2", "(4", "MiB)"]
    assert rows["mine"][-1] == "aaaa" and "yes" not in rows["mine"]
    assert rows["debian-12"][1:4] == ["not", "fetched", "(build)"]


def test_images_json_says_which_image_an_instance_uses(
    state: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    used = cached_image(state, "mine", "saved", "aaaa")
    files = _make_instance("dev")
    record = json.loads(files.state.read_text())
    record["image"]["disk"] = str(used / images.DISK)
    files.state.write_text(json.dumps(record))
    code, out, _ = _run(capsys, "images", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["mine"]["in_use"] is True and rows["mine"]["warm_snapshots"] == 0
    assert rows["debian-12"]["in_use"] is False


def test_image_build_of_a_saved_image_is_ready_at_once(
    state: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = cached_image(state, "mine", "saved", "aaaa")
    code, _, err = _run(capsys, "image", "build", "mine")
    assert code == 0, err
    assert err.startswith(f"mine is ready in {directory} (")
    # No warm boot for it, so there is no snapshot to make either.
    assert _run(capsys, "image", "snapshot", "mine") == (0, "", "")


def test_image_rm_removes_it_and_names_what_is_not_there(
    state: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = cached_image(state, "mine", "saved", "aaaa")
    code, _, err = _run(capsys, "image", "rm", "mine")
    assert code == 0 and err == f"removed mine ({directory.name})\n"
    assert not directory.exists()
    code, _, err = _run(capsys, "image", "rm", "mine")
    assert code == 2
    assert err == "error: no cached image named 'mine' ('ccloudvm images' lists them)\n"


def test_image_prune_with_nothing_to_prune(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "image", "prune") == (0, "", "nothing to prune\n")


def test_image_save_of_a_missing_instance(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "image", "save", "ghost", "mine")
    assert code == 2 and err.startswith("error: no instance named 'ghost'")


def test_build_of_an_unknown_workload(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "build", "no-such-workload")
    assert code == 2 and err.startswith("error: ") and "no-such-workload" in err
    assert len(err.splitlines()) == 1
