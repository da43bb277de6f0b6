"""Saved builds and the image cache's housekeeping, on a real cache directory (no VM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccloudvm.app import buildindex, builds, workflow
from ccloudvm.core.errors import NotFoundError, StateError, UsageError
from ccloudvm.images import catalog as images
from ccloudvm.state.instance_state import ImageRef, InstanceFiles, InstanceState, save_state
from ccloudvm.state.paths import StateDir
from tests.support.cache import cached_image as _cached


def _instance_on(state: StateDir, name: str, disk: Path) -> None:
    files = InstanceFiles(state.instance_dir(name))
    files.dir.mkdir(parents=True)
    save_state(files, InstanceState(name=name, workload="debian", image=ImageRef("x", "k", str(disk)),
               mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022, guest_user="u"))  # fmt: skip


def test_an_image_backing_an_instance_is_never_removed(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    used = _cached(state, "mine", "saved", "aaaa")
    _instance_on(state, "dev", used / images.DISK)
    with pytest.raises(StateError, match="backs an instance"):
        builds.remove(state, "mine")
    assert used.exists()
    with pytest.raises(NotFoundError):
        builds.remove(state, "nothing-like-it")


def test_prune_keeps_what_is_used_current_or_the_users_own(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    current_key = images.load_definition(state, "debian-12").key
    current = _cached(state, "debian-12", "built", current_key)
    stale = _cached(state, "debian-12", "built", "0000000000000000")
    users_own = _cached(state, "my-image", "saved", "bbbb")
    old_build = _cached(state, "go-build-1234abcd", "saved", "cccc")
    kept_build = _cached(state, "go-build-5678abcd", "saved", "dddd")
    (state.cache / "builds").mkdir(parents=True)
    (state.cache / "builds" / "k.json").write_text(json.dumps({"image": "go-build-5678abcd"}))
    in_use = _cached(state, "debian-12", "built", "1111111111111111")
    _instance_on(state, "dev", in_use / images.DISK)

    removed = builds.prune(state)

    assert sorted(removed) == sorted([stale.name, old_build.name])
    for kept in (current, users_own, kept_build, in_use):
        assert kept.exists(), kept


def test_find_build_needs_the_saved_image_to_exist(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    (state.cache / "builds").mkdir(parents=True)
    (state.cache / "builds" / "abc.json").write_text(json.dumps({"image": "w-build-1"}))
    assert buildindex.find_build(state, "abc") is None
    _cached(state, "w-build-1", "saved", "eeee")
    found = buildindex.find_build(state, "abc")
    assert found is not None and found.name == "w-build-1"
    assert buildindex.find_build(state, "other") is None


def test_build_leaves_the_options_it_is_given_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "home")
    state.ensure()
    workload = tmp_path / "w.yaml"
    workload.write_text("image: debian-12\nprovision: [{name: s, run: 'true'}]\n")
    used: list[workflow.CreateOptions] = []

    def create(st: StateDir, ref: object, options: workflow.CreateOptions) -> None:
        used.append(options)
        raise UsageError("stop here")

    monkeypatch.setattr(workflow, "create", create)
    options = workflow.CreateOptions()
    with pytest.raises(UsageError, match="stop here"):
        builds.build(state, str(workload), options)
    assert options == workflow.CreateOptions()
    assert [(o.name, o.use_cache) for o in used] == [("build-w-1", False)]
