"""Full disks and damaged cache entries (issue 8, items 3-5): one line, nothing half-made.

A real full disk comes from /dev/full (every write there fails with ENOSPC); "not enough
free space" comes from a free-space reading made small, since no test may fill a disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from ccloudvm.app import builds
from ccloudvm.core import diskspace, proc
from ccloudvm.core.errors import CcloudvmError
from ccloudvm.core.proc import CommandFailed
from ccloudvm.images import build as imagebuild
from ccloudvm.images import catalog as images
from ccloudvm.images.build import BuildRecipe
from ccloudvm.images.download import download
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import warmboot
from tests.support.cache import cached_image as _cached
from tests.support.httpserver import FileServer, serve_directory
from tests.unit.test_builds_more import _stopped_instance

PAYLOAD = b"0123456789abcdef" * 65536  # 1 MiB
NO_SPACE = "free some or set CCLOUDVM_HOME"


pytestmark = pytest.mark.usefixtures("no_host_proxy")


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, FileServer]]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "disk.img").write_bytes(PAYLOAD)
    with serve_directory(root) as pair:
        yield pair


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _little_free(monkeypatch: pytest.MonkeyPatch, free: int = 4096) -> None:
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: free)


# ---------------------------------------------------------------- downloads


def test_a_disk_that_fills_during_a_download_is_one_line_and_keeps_no_part(
    served: tuple[str, FileServer], tmp_path: Path
) -> None:
    base, _ = served
    dest = tmp_path / "dl" / "disk.img"
    dest.parent.mkdir()
    part = dest.with_name("disk.img.part")
    part.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as a full disk does
    with pytest.raises(diskspace.NoSpaceError) as caught:
        download(f"{base}/disk.img", dest, _sha(PAYLOAD))
    assert NO_SPACE in str(caught.value) and "no space left on /" in str(caught.value)
    assert ": 1 MiB needed, " in str(caught.value)  # the size the server announced
    assert "\n" not in str(caught.value)
    assert not os.path.lexists(part) and not dest.exists()


def test_a_known_size_beyond_the_free_space_is_refused_before_writing(
    served: tuple[str, FileServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = served
    _little_free(monkeypatch)
    dest = tmp_path / "disk.img"
    with pytest.raises(diskspace.NoSpaceError, match=r"1 MiB needed, 0 MiB free"):
        download(f"{base}/disk.img", dest, _sha(PAYLOAD))
    assert list(tmp_path.glob("disk.img*")) == []


def test_checksum_mismatch_leaves_nothing_in_the_cache(
    served: tuple[str, FileServer], tmp_path: Path
) -> None:
    base, _ = served
    state = StateDir(tmp_path / "state")
    state.user_images.mkdir(parents=True)
    (state.user_images / "bad.yaml").write_text(
        f"source:\n  disk: {base}/disk.img\n  sha256: {{disk: '{'1' * 64}'}}\n"
    )
    with pytest.raises(CcloudvmError, match="checksum mismatch"):
        images.ensure_image(state, "bad")
    leftovers = [p for p in state.cache.rglob("*") if p.name != "images.lock" and p.is_file()]
    assert leftovers == []
    assert not (state.cache / "downloads").exists() or not any(
        (state.cache / "downloads").iterdir()
    )


def test_an_image_download_stopped_by_ctrl_c_is_never_an_image(
    served: tuple[str, FileServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8: "dlslow is ready ... (0.0 s)" from a partial download. ^C after the first
    chunk leaves no cached image, only the partial file, which the next run resumes with a
    Range request and verifies before anything is called cached."""
    import requests

    base, server = served
    state = StateDir(tmp_path / "state")
    state.user_images.mkdir(parents=True)
    (state.user_images / "dl.yaml").write_text(
        f"source:\n  disk: {base}/disk.img\n  sha256: {{disk: '{_sha(PAYLOAD)}'}}\n"
    )
    whole = requests.Response.iter_content

    def one_chunk_then_ctrl_c(
        self: requests.Response, *args: Any, **kwargs: Any
    ) -> Iterator[bytes]:
        yield next(whole(self, *args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(requests.Response, "iter_content", one_chunk_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        images.ensure_image(state, "dl")
    assert images.cached_images(state) == []
    (part,) = (state.cache / "downloads").rglob("*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD)

    monkeypatch.setattr(requests.Response, "iter_content", whole)
    image = images.ensure_image(state, "dl")
    assert server.requests[-1].headers.get("Range") == f"bytes={kept}-"
    assert [i.name for i in images.cached_images(state)] == ["dl"]
    assert image.disk.is_file() and not part.exists()


# ---------------------------------------------------------------- builds, saves, snapshots


def test_an_image_build_is_refused_up_front_when_it_cannot_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _little_free(monkeypatch)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(proc, "require_tool", lambda tool: tool)
    with pytest.raises(diskspace.NoSpaceError, match=r"2048 MiB needed"):
        imagebuild.build_image(BuildRecipe(suite="bookworm", packages=()), tmp_path, name="t")
    assert list(tmp_path.iterdir()) == []


def test_a_build_step_that_fills_the_disk_is_one_line_and_its_work_tree_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(proc, "require_tool", lambda tool: tool)

    def mmdebstrap_fills_the_disk(*args: Any, **kwargs: Any) -> None:
        raise CommandFailed(["mmdebstrap"], 1, "E: write failed: No space left on device")

    monkeypatch.setattr(proc, "run", mmdebstrap_fills_the_disk)
    with pytest.raises(diskspace.NoSpaceError, match=NO_SPACE):
        imagebuild.build_image(BuildRecipe(suite="bookworm", packages=()), tmp_path, name="t")
    assert list(tmp_path.iterdir()) == []


def test_a_save_that_cannot_fit_is_refused_before_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "state")
    files = _stopped_instance(state, tmp_path)
    subprocess.run(  # noqa: S603 - fixed argv: 4 MiB of data so the measure is not zero
        ["qemu-io", "-c", "write -P 7 0 4M", str(files.disk)], check=True, capture_output=True
    )
    needed = builds._save_needs(files.disk)
    assert needed >= 8 << 20  # flat data plus its compressed copy
    _little_free(monkeypatch, needed - 1)
    with pytest.raises(diskspace.NoSpaceError, match=f"{needed >> 20} MiB needed") as caught:
        builds.save_instance(state, "dev", "my-image", offline_generalise=False)
    assert NO_SPACE in str(caught.value) and "\n" not in str(caught.value)
    assert images.cached_images(state) == []  # nothing saved, nothing half-written
    assert list((state.cache / "tmp").iterdir()) == []
    assert not images.images_dir(state).exists() or not any(images.images_dir(state).iterdir())


def test_a_snapshot_without_room_boots_cold_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _little_free(monkeypatch)
    folder = tmp_path / "warm" / "img" / "shape"
    folder.parent.mkdir(parents=True)
    with pytest.raises(warmboot.WarmBootFailed, match=NO_SPACE):
        warmboot._make(StateDir(tmp_path), cast(Any, None), cast(Any, None), "qemu", folder)
    assert list(folder.parent.iterdir()) == []


def test_reporting_full_disk_passes_other_failures_through(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="bad option"), diskspace.reporting_full_disk(tmp_path):
        raise CommandFailed(["qemu-img"], 1, "qemu-img: bad option")
    with pytest.raises(diskspace.NoSpaceError), diskspace.reporting_full_disk(tmp_path):
        raise OSError(28, "No space left on device")


# ---------------------------------------------------------------- listings


@pytest.mark.parametrize(
    "damage",
    ["unparsable image.json", "image.json not an object", "no disk", "no image.json"],
)
def test_a_damaged_cached_image_is_named_and_the_rest_listed(tmp_path: Path, damage: str) -> None:
    state = StateDir(tmp_path)
    good = _cached(state, "good", "saved", "aaaa")
    bad = _cached(state, "bad", "saved", "bbbb")
    if damage == "unparsable image.json":
        (bad / images.METADATA).write_text("{not json")
    elif damage == "image.json not an object":
        (bad / images.METADATA).write_text("[]")
    elif damage == "no disk":
        (bad / images.DISK).unlink()
    else:
        (bad / images.METADATA).unlink()
    broken: list[str] = []
    assert [i.directory for i in images.cached_images(state, broken)] == [good]
    assert len(broken) == 1 and str(bad) in broken[0] and "remove that folder" in broken[0]


def _ccloudvm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", *args],
        env={**os.environ, "CCLOUDVM_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_images_lists_the_rest_beside_a_broken_definition_image_and_snapshot(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path)
    state.user_images.mkdir(parents=True)
    (state.user_images / "broken.yaml").write_text("source: [unclosed\n")
    _cached(state, "good", "saved", "aaaa")
    bad = _cached(state, "bad", "saved", "bbbb")
    (bad / images.METADATA).write_text("{")
    odd_snapshot = warmboot.snapshots_dir(state) / "good-aaaa" / "not-a-folder"
    odd_snapshot.parent.mkdir(parents=True)
    odd_snapshot.write_text("")

    result = _ccloudvm(tmp_path, "images", "--json")

    assert result.returncode == 0, result.stderr
    names = {row["name"] for row in json.loads(result.stdout)}
    assert {"good", "debian-12"} <= names and "bad" not in names
    assert "broken.yaml" in result.stderr and str(bad) in result.stderr
    assert "Traceback" not in result.stderr


def test_prune_keeps_builds_while_a_build_record_is_damaged(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    build = _cached(state, "go-build-1234abcd", "saved", "cccc")
    records = state.cache / "builds"
    records.mkdir(parents=True)
    (records / "k.json").write_text("{damaged")
    assert builds.prune(state) == []
    assert build.exists()
    (records / "k.json").unlink()
    assert builds.prune(state) == [build.name]


def test_prune_keeps_definition_images_while_a_definition_is_damaged(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.user_images.mkdir(parents=True)
    (state.user_images / "mine.yaml").write_text("source: [unclosed\n")
    fetched = _cached(state, "mine", "downloaded", "0000000000000000")
    assert builds.prune(state) == []
    assert fetched.exists()


# ---------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device", "/somewhere/file"),
        CommandFailed(["qemu-img"], 1, "qemu-img: error while writing: No space left on device"),
    ],
)
def test_the_cli_turns_an_unforeseen_full_disk_into_the_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failure: Exception,
) -> None:
    from ccloudvm.cli import main as cli
    from ccloudvm.state import instance_state

    def full(state: StateDir) -> list[str]:
        raise failure

    monkeypatch.setenv("CCLOUDVM_HOME", str(tmp_path))
    monkeypatch.setattr(instance_state, "instance_names", full)
    with pytest.raises(SystemExit) as exited:
        cli.main(["instances"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on /") and NO_SPACE in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
