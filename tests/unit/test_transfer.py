from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.remote import transfer


class _Recorder:
    """Stands in for the SSH target: records which SFTP operation copy() picks."""

    def __init__(self, dirs: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.dirs = set(dirs)
        self.calls: list[tuple[Any, ...]] = []

    def is_dir(self, remote: str) -> bool:
        return remote.rstrip("/") in self.dirs

    def put_file(self, local: Path, remote: str, *, mode: int = 0o644) -> None:
        self.calls.append(("put_file", local.name, remote))

    def put_tree(self, local: Path, remote: str) -> None:
        self.calls.append(("put_tree", local.name, remote))

    def get_file(self, remote: str, local: Path) -> None:
        self.calls.append(("get_file", remote, local.name))

    def get_tree(self, remote: str, local: Path) -> None:
        self.calls.append(("get_tree", remote, local.name))


def test_exactly_one_side_is_the_guest(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="starting with ':'"):
        transfer.copy(_Recorder(), "a", "b", recursive=False)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="starting with ':'"):
        transfer.copy(_Recorder(), ":a", ":b", recursive=False)  # type: ignore[arg-type]


def test_file_into_a_guest_folder_keeps_its_name(tmp_path: Path) -> None:
    local = tmp_path / "f.txt"
    local.write_text("x")
    target = _Recorder({"/tmp"})
    transfer.copy(target, str(local), ":/tmp/", recursive=False)  # type: ignore[arg-type]
    assert target.calls == [("put_file", "f.txt", "/tmp/f.txt")]


def test_folders_need_r(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="add -r"):
        transfer.copy(_Recorder({"/tmp"}), str(tmp_path), ":/tmp", recursive=False)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="add -r"):
        transfer.copy(_Recorder({"/etc"}), ":/etc", str(tmp_path), recursive=False)  # type: ignore[arg-type]


def test_guest_to_host_into_a_folder(tmp_path: Path) -> None:
    target = _Recorder({"/srv/tree"})
    transfer.copy(target, ":/etc/os-release", str(tmp_path), recursive=False)  # type: ignore[arg-type]
    transfer.copy(target, ":/srv/tree", str(tmp_path), recursive=True)  # type: ignore[arg-type]
    assert target.calls == [
        ("get_file", "/etc/os-release", "os-release"),
        ("get_tree", "/srv/tree", "tree"),
    ]


def test_missing_local_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        transfer.copy(_Recorder(), str(tmp_path / "nope"), ":/tmp/", recursive=False)  # type: ignore[arg-type]


def test_several_sources_go_into_a_folder_that_exists(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a")
    b.write_text("b")
    target = _Recorder({"/tmp"})
    transfer.copy_many(target, [str(a), str(b)], ":/tmp", recursive=False)  # type: ignore[arg-type]
    assert target.calls == [
        ("put_file", "a.txt", "/tmp/a.txt"),
        ("put_file", "b.txt", "/tmp/b.txt"),
    ]


@pytest.mark.parametrize(
    ("sources", "dest", "problem"),
    [
        (["a.txt", ":/etc/hosts"], ":/tmp", "all be on one side"),
        ([":/etc/hosts", ":/etc/passwd"], ":/tmp", "all be on one side"),
        (["a.txt", "b.txt"], ":/tmp/new-name", "is not a folder"),
        (["a.txt", "missing.txt"], ":/tmp", "missing.txt does not exist"),
    ],
)
def test_several_sources_are_checked_before_anything_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: list[str], dest: str, problem: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    target = _Recorder({"/tmp"})
    with pytest.raises(UsageError, match=problem):
        transfer.copy_many(target, sources, dest, recursive=False)  # type: ignore[arg-type]
    assert target.calls == []
