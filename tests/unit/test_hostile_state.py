"""Issue 8: hostile state (symbolic links), interrupted creates, concurrent allocations."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ccloudvm.cli.main import main
from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.instance import boot
from ccloudvm.instance import create as instance_create
from ccloudvm.instance import lifecycle as instance
from ccloudvm.instance.checks import CreateRequest
from ccloudvm.instance.status import status
from ccloudvm.state.instance_state import (
    ImageRef,
    InstanceFiles,
    InstanceState,
    files_of,
    instance_names,
    load_state,
    reserve_host_ip,
    save_state,
)
from ccloudvm.state.paths import StateDir


def _state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "home")
    state.ensure()
    return state


def _request(name: str = "vm") -> CreateRequest:
    return CreateRequest(workload="debian", image="img", name=name, mem_mib=512, cpus=1, disk_gib=1)


def test_a_dangling_link_as_instance_folder_is_one_line(tmp_path: Path) -> None:
    state = _state(tmp_path)
    (state.instances / "vm").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CcloudvmError, match="is a symbolic link to .*nowhere.*remove the link"):
        instance_create.create(state, _request())


def test_a_link_to_another_folder_gets_nothing_written_into_it(tmp_path: Path) -> None:
    state = _state(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (state.instances / "vm").symlink_to(target)
    with pytest.raises(CcloudvmError, match="symbolic link"):
        instance_create.create(state, _request())
    with (
        pytest.raises(CcloudvmError, match="symbolic link"),
        instance.instance_lock(files_of(state, "vm")),
    ):
        pass
    assert list(target.iterdir()) == []
    assert instance_names(state) == []


def test_delete_of_a_link_name_leaves_the_target(tmp_path: Path) -> None:
    state = _state(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("x")
    (state.instances / "vm").symlink_to(target)
    with pytest.raises(CcloudvmError) as caught:
        instance.delete(state, "vm")
    assert "\n" not in str(caught.value) and "symbolic link" in str(caught.value)
    assert (target / "keep").read_text() == "x"


def test_instances_names_a_link_and_lists_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _state(tmp_path)
    files = files_of(state, "good")
    files.dir.mkdir()
    save_state(files, InstanceState(
        name="good", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=512, cpus=1, disk_gib=1, host_ip="127.77.0.2", ssh_port=10022, guest_user="u",
        desired="stopped",
    ))  # fmt: skip
    target = tmp_path / "elsewhere"
    target.mkdir()
    (state.instances / "linked").symlink_to(target)
    (state.instances / "dangling").symlink_to(tmp_path / "nowhere")
    monkeypatch.setenv("CCLOUDVM_HOME", str(state.root))
    monkeypatch.setenv("CCLOUDVM_ACCEL", "tcg")
    main(["instances"])  # returns: exit status 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["good"]
    warnings = err.strip().splitlines()
    assert len(warnings) == 2, err
    for name, where in (("dangling", "nowhere"), ("linked", "elsewhere")):
        line = next(w for w in warnings if f"instances/{name} " in w)
        assert f"is a symbolic link to {tmp_path / where}" in line and "remove the link" in line
    assert list(target.iterdir()) == []


def test_an_instance_record_is_never_read_through_a_link(tmp_path: Path) -> None:
    state = _state(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    save_state(InstanceFiles(target), InstanceState(
        name="vm", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=512, cpus=1, disk_gib=1, host_ip="127.77.0.2", ssh_port=10022, guest_user="u",
    ))  # fmt: skip
    (state.instances / "vm").symlink_to(target)
    for read in (load_state, status):
        with pytest.raises(CcloudvmError, match="vm is a symbolic link to .*elsewhere") as info:
            read(state, "vm")
        assert "\n" not in str(info.value)
    assert [p.name for p in target.iterdir()] == ["state.json"]


def test_a_link_as_a_main_subfolder_is_refused(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "home")
    state.root.mkdir()
    (state.root / "cache").symlink_to(tmp_path)
    with pytest.raises(CcloudvmError, match="cache is a symbolic link"):
        state.ensure()


def _fake_create(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    disk = tmp_path / "base.qcow2"
    disk.write_text("")
    base = SimpleNamespace(
        name="img", key="k", disk=disk, kernel=None, initrd=None, cmdline=None,
        warm_boot=False,
    )  # fmt: skip
    monkeypatch.setattr(instance_create, "require_tool", lambda name: name)
    monkeypatch.setattr(instance_create, "_check_disk_room", lambda *a: None)
    monkeypatch.setattr(instance_create.images, "ensure_image", lambda *a, **k: base)
    monkeypatch.setattr(instance_create, "_disk_virtual_size_gib", lambda *a: 0.0)
    monkeypatch.setattr(instance_create.warmboot, "fits", lambda *a: False)
    monkeypatch.setattr(instance_create.seed, "write_seed_iso", lambda *a, **k: None)
    monkeypatch.setattr(boot, "force_off", lambda *a: None)


def _interrupt(*_a: Any, **_k: Any) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("step", ["ensure_image", "write_seed_iso", "_first_boot", "_wait_ready"])
def test_an_interrupted_create_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: str
) -> None:
    state = _state(tmp_path)
    _fake_create(monkeypatch, tmp_path)
    owner = {
        "ensure_image": instance_create.images,
        "write_seed_iso": instance_create.seed,
        "_wait_ready": boot,
    }
    monkeypatch.setattr(
        owner.get(step, instance_create), step.replace("_wait_ready", "wait_ready"), _interrupt
    )
    if step == "_wait_ready":
        monkeypatch.setattr(instance_create, "_first_boot", lambda *a: None)
    with pytest.raises(KeyboardInterrupt):
        instance_create.create(state, _request())
    assert not state.instance_dir("vm").exists()
    assert instance_names(state) == []


def _fail(*_a: Any, **_k: Any) -> None:
    raise CcloudvmError("it broke")


@pytest.mark.parametrize("step", ["write_seed_iso", "_first_boot"])
def test_a_create_failing_before_the_guest_starts_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: str
) -> None:
    state = _state(tmp_path)
    _fake_create(monkeypatch, tmp_path)
    monkeypatch.setattr(instance_create.seed if step == "write_seed_iso" else instance_create,
                        step, _fail)  # fmt: skip
    with pytest.raises(CcloudvmError, match="it broke"):
        instance_create.create(state, _request())
    assert not state.instance_dir("vm").exists()


def test_a_guest_that_started_but_failed_stays_marked_for_inspection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = _state(tmp_path)
    _fake_create(monkeypatch, tmp_path)
    monkeypatch.setattr(instance_create, "_first_boot", lambda *a: None)
    monkeypatch.setattr(boot, "wait_ready", _fail)
    with pytest.raises(CcloudvmError, match="it broke"):
        instance_create.create(state, _request())
    files = files_of(state, "vm")
    assert files.seed.parent.is_dir() and files.creating.exists()  # `failed` once we are gone


def test_concurrent_reservations_never_share_an_address(tmp_path: Path) -> None:
    state = _state(tmp_path)
    got: list[str] = []
    barrier = threading.Barrier(8)

    def one(index: int) -> None:
        files = files_of(state, f"vm{index}")
        files.dir.mkdir()
        barrier.wait()
        got.append(reserve_host_ip(state, files))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8 and len(set(got)) == 8


def test_root_never_writes_into_another_users_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccloudvm.state import paths

    users = tmp_path / "alice-home"
    users.mkdir()
    if os.getuid() == 0:
        os.chown(users, 4321, 4321)  # as a user's home is
    monkeypatch.setattr(paths.os, "geteuid", lambda: 0)  # as under sudo -E
    with pytest.raises(UsageError, match="would leave root-owned files") as info:
        paths.refuse_root_in_foreign_state(StateDir(users / ".ccloudvm"))
    assert info.value.hint is not None and "without sudo" in info.value.hint
    assert not (users / ".ccloudvm").exists()
    monkeypatch.setattr(paths.os, "geteuid", lambda: 4321)  # the user itself: fine
    paths.refuse_root_in_foreign_state(StateDir(users / ".ccloudvm"))
