"""Saving a stopped instance as an image with the real qemu-img (and mkfs.ext4/debugfs for
the offline generalise), the build index, and the cache housekeeping's warnings: on a real
state directory, no VM."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ccloudvm.app import buildindex, builds
from ccloudvm.core import pids
from ccloudvm.core.errors import CcloudvmError, NotFoundError, StateError, UsageError
from ccloudvm.images import catalog as images
from ccloudvm.state.instance_state import ImageRef, InstanceFiles, InstanceState, save_state
from ccloudvm.state.paths import StateDir
from ccloudvm.workloads.loader import load_workload
from ccloudvm.workloads.templating import TemplateContext
from tests.support.cache import cached_image


def _qemu_img(*args: str | Path) -> str:
    return subprocess.run(  # noqa: S603 - fixed argv
        ["qemu-img", *map(str, args)],
        check=True,
        capture_output=True,
        text=True,  # noqa: S607
    ).stdout


def _stopped_instance(state: StateDir, tmp_path: Path, *, ext4: bool = False) -> InstanceFiles:
    """Instance 'dev', stopped, with a small qcow2 disk (an ext4 filesystem if asked) and a
    kernel and initrd recorded from its image."""
    files = InstanceFiles(state.instance_dir("dev"))
    files.dir.mkdir(parents=True)
    if ext4:
        tree = tmp_path / "tree"
        (tree / "etc").mkdir(parents=True)
        (tree / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        (tree / "home/u/notes.txt").parent.mkdir(parents=True)
        (tree / "home/u/notes.txt").write_text("mine\n")
        raw = tmp_path / "root.raw"
        raw.write_bytes(b"")
        subprocess.run(  # noqa: S603 - fixed argv
            ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(raw), "8M"],
            check=True,  # noqa: S607
        )
        _qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, files.disk)
    else:
        _qemu_img("create", "-q", "-f", "qcow2", files.disk, "8M")
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    ref = ImageRef("debian-12", "k", "/c/disk.qcow2", kernel=str(kernel), initrd=str(initrd),
                   cmdline="root=/dev/vda console=ttyS0", warm_boot=True)  # fmt: skip
    save_state(files, InstanceState(name="dev", workload="debian", image=ref, mem_mib=1024,
               cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022, guest_user="u"))  # fmt: skip
    return files


def test_save_flattens_the_disk_and_keeps_the_boot_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StateDir(tmp_path / "state")
    _stopped_instance(state, tmp_path)
    image = builds.save_instance(state, "dev", "my-image", offline_generalise=False)
    assert (image.name, image.kind, image.warm_boot) == ("my-image", "saved", True)
    assert image.cmdline == "root=/dev/vda console=ttyS0"
    assert image.kernel is not None and image.kernel.read_bytes() == b"kernel"
    assert image.initrd is not None and image.initrd.read_bytes() == b"initrd"
    info = json.loads(_qemu_img("info", "--output=json", image.disk))
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert [i.name for i in images.cached_images(state)] == ["my-image"]
    assert "saved dev as image my-image (" in capsys.readouterr().err
    assert not list((state.cache / "tmp").iterdir())  # the flattened copy is gone


def test_save_generalises_an_ext4_disk_offline(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    _stopped_instance(state, tmp_path, ext4=True)
    image = builds.save_instance(state, "dev", "generic")
    raw = tmp_path / "check.raw"
    _qemu_img("convert", "-O", "raw", image.disk, raw)
    machine_id = subprocess.run(  # noqa: S603 - fixed argv
        ["debugfs", "-R", "cat /etc/machine-id", str(raw)],  # noqa: S607
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert machine_id == ""  # emptied: the next boot makes a new one
    notes = subprocess.run(  # noqa: S603 - fixed argv
        ["debugfs", "-R", "cat /home/u/notes.txt", str(raw)],  # noqa: S607
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert notes == "mine\n"


def test_save_of_a_disk_it_cannot_generalise_saves_nothing(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    _stopped_instance(state, tmp_path)  # blank: no whole-disk ext4
    with pytest.raises(CcloudvmError, match="can only generalise whole-disk ext4 images"):
        builds.save_instance(state, "dev", "my-image")
    assert images.cached_images(state) == []
    assert not list((state.cache / "tmp").iterdir())


def test_save_refuses_a_name_in_use(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    _stopped_instance(state, tmp_path)
    cached_image(state, "taken", "saved", "aaaa")
    with pytest.raises(UsageError, match="an image named 'taken' exists already") as info:
        builds.save_instance(state, "dev", "taken")
    assert info.value.hint == "choose another name or 'ccloudvm image rm taken'"
    with pytest.raises(UsageError, match="'debian-12' is the name of an image definition"):
        builds.save_instance(state, "dev", "debian-12")


def test_save_of_an_instance_being_created_is_refused(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    files = _stopped_instance(state, tmp_path)
    me = os.getpid()
    files.creating.write_text(json.dumps({"pid": me, "start": pids.start_ticks(me)}))
    with pytest.raises(StateError) as info:
        builds.save_instance(state, "dev", "my-image")
    assert info.value.message == "'dev' is running; an image must be saved from a stopped instance"
    assert info.value.hint == "run 'ccloudvm stop dev' first"
    assert images.cached_images(state) == []


def test_save_of_an_unknown_instance_names_it(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="ghost"):
        builds.save_instance(StateDir(tmp_path), "ghost", "img")


def test_the_build_key_follows_the_workload_and_its_base_image(
    tmp_path: Path, ctx: TemplateContext
) -> None:
    state = StateDir(tmp_path)
    state.user_workloads.mkdir(parents=True)
    (state.user_workloads / "one.yaml").write_text("image: debian-12\ndescription: one\n")
    (state.user_workloads / "two.yaml").write_text("image: debian-12\ndescription: two\n")
    one = load_workload(state, "one", ctx)
    key = buildindex.build_key(state, one)
    assert len(key) == 16 and key == buildindex.build_key(state, load_workload(state, "one", ctx))
    assert key != buildindex.build_key(state, load_workload(state, "two", ctx))


def test_base_key_of_a_saved_image_is_its_newest_cached_key(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert buildindex.base_key(state, "debian-12") == images.load_definition(state, "debian-12").key
    cached_image(state, "mine", "saved", "1111")
    cached_image(state, "mine", "saved", "2222")
    assert buildindex.base_key(state, "mine") == "2222"
    with pytest.raises(NotFoundError, match="no image definition called 'nothing'"):
        buildindex.base_key(state, "nothing")


def test_a_recorded_build_is_found_again(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    cached_image(state, "w-build-1234abcd", "saved", "eeee")
    image = images.cached_images(state)[0]
    buildindex.record_build(state, "k1", image, "w")
    record = json.loads((state.cache / "builds" / "k1.json").read_text())
    assert record == {"image": "w-build-1234abcd", "workload": "w", "image_key": "eeee"}
    assert buildindex.find_build(state, "k1") == image
    assert [p.name for p in (state.cache / "builds").iterdir()] == ["k1.json"]  # no tmp left


def test_remove_deletes_an_unused_image_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StateDir(tmp_path)
    folder = cached_image(state, "old", "saved", "aaaa")
    (state.instance_dir("broken")).mkdir(parents=True)
    (state.instance_dir("broken") / "state.json").write_text("{not json")  # skipped, not fatal
    builds.remove(state, "old")
    assert not folder.exists()
    assert f"removed old ({folder.name})" in capsys.readouterr().err


def test_prune_keeps_everything_a_damaged_record_or_definition_might_need(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StateDir(tmp_path)
    old_build = cached_image(state, "go-build-1234abcd", "saved", "cccc")
    stale = cached_image(state, "debian-12", "built", "0000000000000000")
    (state.cache / "builds").mkdir(parents=True)
    record = state.cache / "builds" / "bad.json"
    record.write_text("[]")
    state.user_images.mkdir(parents=True)
    (state.user_images / "mine.yaml").write_text("::: not a definition\n")

    assert builds.prune(state) == []

    err = capsys.readouterr().err
    assert f"warning: build record {record} is damaged" in err
    assert "remove it, then prune again" in err
    assert "images of definitions are kept until it is fixed" in err
    assert old_build.exists() and stale.exists()


def test_a_workload_built_before_is_not_built_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ccloudvm.app import workflow

    state = StateDir(tmp_path)
    state.user_workloads.mkdir(parents=True)
    (state.user_workloads / "w.yaml").write_text("image: debian-12\ndescription: w\n")
    workload = workflow.Loaded(state, "w").render(buildindex.BUILD_INSTANCE_NAME)
    key = buildindex.build_key(state, workload)
    cached_image(state, "w-build-1234abcd", "saved", "eeee")
    buildindex.record_build(state, key, images.cached_images(state)[0], "w")
    image = builds.build(state, "w", workflow.CreateOptions())
    assert image.name == "w-build-1234abcd"
    assert (
        "w is already built as image w-build-1234abcd (use --no-cache to rebuild)"
        in capsys.readouterr().err
    )
    assert not state.instances.exists()  # nothing was created
