"""The volumes of a domain on another host (ccloudvm.vm.libvirt_storage) against the fake
libvirt (tests/unit/fake_libvirt.py): the pool used or made, a file uploaded once under
its content's name and exactly its bytes, the disk over it, what a refusal or a failed
upload leaves (one line, no partial volume), and the console copied into the local log.
The XML given to libvirt is checked by libvirt's own schema (virt-xml-validate)."""

from __future__ import annotations

import hashlib
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.vm import libvirt_storage
from ccloudvm.vm.libvirt_storage import ConsoleTap, volume_name
from tests.unit.fake_libvirt import (
    STREAM_BUF_SIZE,
    VIR_ERR_AUTH_FAILED,
    VIR_ERR_OPERATION_DENIED,
    FakeConnection,
    FakeDomain,
    FakeLibvirt,
    FakeLibvirtError,
    FakePool,
    FakeStream,
    pool_xml,
)
from tests.unit.xml_schema import needs_validator, validate

SYSTEM = "qemu+ssh://alice@far.example/system"
SESSION = "qemu+ssh://alice@far.example/session"


@pytest.fixture
def lv() -> FakeLibvirt:
    return FakeLibvirt(FakeConnection())


@pytest.fixture
def store(lv: FakeLibvirt) -> FakePool:
    found = FakePool(pool_xml())
    lv.conn.pools["ccloudvm"] = found
    return found


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- names ----------------------------------------------------------------------------


def test_a_volume_is_named_by_its_content_then_its_file_name(tmp_path: Path) -> None:
    data = b"qcow2 image bytes" * 1000
    one = _file(tmp_path, "debian-12.qcow2", data)
    (tmp_path / "elsewhere").mkdir()
    same = _file(tmp_path / "elsewhere", "debian-12.qcow2", data)
    other = _file(tmp_path / "elsewhere", "other.qcow2", data)
    changed = _file(tmp_path, "changed.qcow2", data + b"!")
    digest = hashlib.sha256(data).hexdigest()
    assert volume_name(one) == f"{digest[:20]}-debian-12.qcow2"
    assert volume_name(same) == volume_name(one)  # where it lies does not count
    assert volume_name(other) == f"{digest[:20]}-other.qcow2"
    assert volume_name(changed).split("-", 1)[0] != digest[:20]


# --- the pool -------------------------------------------------------------------------


def test_an_existing_pool_is_used_as_it_is(lv: FakeLibvirt, store: FakePool) -> None:
    assert libvirt_storage.pool(lv, lv.conn, SESSION) is store
    assert lv.conn.pools_defined == []
    assert store.calls == [("refresh", 0)]  # sizes up to date before an upload


def test_an_inactive_pool_is_started(lv: FakeLibvirt, store: FakePool) -> None:
    store.active = False
    assert libvirt_storage.pool(lv, lv.conn, SESSION) is store
    assert store.calls == [("create", 0), ("refresh", 0)]


@needs_validator
def test_a_missing_pool_is_made_under_system(lv: FakeLibvirt, tmp_path: Path) -> None:
    made = libvirt_storage.pool(lv, lv.conn, SYSTEM)
    assert lv.conn.pools_defined and lv.conn.pools["ccloudvm"] is made
    root = ET.fromstring(lv.conn.pools_defined[0])
    assert root.get("type") == "dir"
    assert root.findtext("name") == "ccloudvm"
    assert root.findtext("target/path") == "/var/lib/libvirt/images/ccloudvm"
    validate(lv.conn.pools_defined[0], "storagepool", tmp_path)
    assert made.calls == [("build", 0), ("create", 0), ("refresh", 0)]
    assert made.autostart and made.active


def test_a_missing_pool_under_session_is_refused_with_how_to_make_it(lv: FakeLibvirt) -> None:
    with pytest.raises(UsageError) as info:
        libvirt_storage.pool(lv, lv.conn, SESSION)
    assert info.value.message == (
        f"libvirt at {SESSION} has no storage pool 'ccloudvm' for ccloudvm's images"
    )
    assert info.value.hint is not None
    assert "virsh pool-define-as ccloudvm dir --target DIR" in info.value.hint
    assert "virsh pool-start ccloudvm" in info.value.hint
    assert lv.conn.pools_defined == []


@pytest.mark.parametrize(
    "error",
    [
        FakeLibvirtError("access denied by ACL policy", VIR_ERR_OPERATION_DENIED),
        FakeLibvirtError("authentication failed", VIR_ERR_AUTH_FAILED),
        FakeLibvirtError("cannot create directory: Permission denied\nmore"),
    ],
    ids=["denied", "auth", "permission-text"],
)
def test_a_refused_pool_is_one_line_saying_whom_to_connect_as(
    lv: FakeLibvirt, error: FakeLibvirtError
) -> None:
    lv.conn.pool_define_error = error
    with pytest.raises(CcloudvmError) as info:
        libvirt_storage.pool(lv, lv.conn, SYSTEM)
    message = info.value.message
    assert message.startswith(f"libvirt at {SYSTEM} does not allow us to make its storage pool")
    assert "\n" not in message
    assert info.value.hint is not None and "libvirt group" in info.value.hint


def test_a_failed_pool_lookup_is_reported_and_nothing_made(lv: FakeLibvirt) -> None:
    lv.conn.pool_lookup_error = FakeLibvirtError("cannot recv data: Connection reset")
    with pytest.raises(CcloudvmError) as info:
        libvirt_storage.pool(lv, lv.conn, SYSTEM)
    assert info.value.message == (
        f"libvirt at {SYSTEM} could not look up its storage pools: cannot recv data: "
        "Connection reset"
    )
    assert lv.conn.pools_defined == []


def test_a_pool_made_that_cannot_be_built_is_undefined_again(lv: FakeLibvirt) -> None:
    real_define = lv.conn.storagePoolDefineXML

    def define(xml: str, flags: int) -> FakePool:
        made = real_define(xml, flags)
        made.fail["build"] = FakeLibvirtError("cannot create path '/var/lib/libvirt': Read-only")
        return made

    lv.conn.storagePoolDefineXML = define  # type: ignore[method-assign]
    with pytest.raises(CcloudvmError, match="could not make its storage pool 'ccloudvm'"):
        libvirt_storage.pool(lv, lv.conn, SYSTEM)
    assert ("undefine",) in lv.conn.pools["ccloudvm"].calls  # not left defined and dead


def test_a_pool_that_does_not_start_is_reported(lv: FakeLibvirt, store: FakePool) -> None:
    store.active = False
    store.fail["create"] = FakeLibvirtError("cannot open directory '/srv/pool': No such file")
    with pytest.raises(CcloudvmError, match="could not make its storage pool 'ccloudvm': cannot"):
        libvirt_storage.pool(lv, lv.conn, SYSTEM)


# --- uploads --------------------------------------------------------------------------


@needs_validator
def test_a_new_file_is_uploaded_whole_into_a_raw_volume_of_its_size(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    data = os.urandom(2 * STREAM_BUF_SIZE + 12345)  # more than one stream buffer
    image = _file(tmp_path, "img.qcow2", data)
    path = libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    name = volume_name(image)
    assert path == f"/srv/pool/{name}"
    (_, xml, flags), *_ = (c for c in store.calls if c[0] == "createXML")
    assert flags == 0
    root = ET.fromstring(xml)
    assert root.findtext("name") == name
    assert root.find("capacity").text == str(len(data))  # type: ignore[union-attr]
    assert root.find("capacity").get("unit") == "bytes"  # type: ignore[union-attr]
    assert root.find("target/format").get("type") == "raw"  # type: ignore[union-attr]
    assert root.find("backingStore") is None
    validate(xml, "storagevol", tmp_path)
    volume = store.volumes[name]
    assert volume.calls == [("upload", 0, len(data), 0)]
    (stream,) = lv.conn.streams
    assert bytes(stream.sent) == data and bytes(volume.data) == data
    assert stream.finished and not stream.aborted


def test_a_file_already_there_is_not_uploaded_again(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    image = _file(tmp_path, "img.qcow2", b"x" * 1000)
    first = libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    store.calls.clear()
    again = libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    assert again == first
    assert not any(c[0] == "createXML" for c in store.calls)
    assert len(lv.conn.streams) == 1  # the first upload's only


def test_an_upload_that_never_finished_is_made_again(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    image = _file(tmp_path, "img.qcow2", b"y" * 2000)
    libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    name = volume_name(image)
    assert f"{name}.complete" in store.volumes
    # As a process killed mid-upload leaves it: the volume, half-written, and no marker.
    del store.volumes[f"{name}.complete"]
    store.volumes[name].data[:] = b"y" * 10
    libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    assert bytes(store.volumes[name].data) == b"y" * 2000
    assert f"{name}.complete" in store.volumes
    assert len(lv.conn.streams) == 2


def test_a_failed_upload_deletes_its_volume_and_says_so_in_one_line(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    image = _file(tmp_path, "img.qcow2", os.urandom(3 * STREAM_BUF_SIZE))
    lv.conn.next_stream = lambda stream: setattr(stream, "fail_after", STREAM_BUF_SIZE)
    with pytest.raises(CcloudvmError) as info:
        libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    assert info.value.message == (
        f"libvirt at {SYSTEM} could not upload img.qcow2: stream had I/O failure: "
        "Connection reset by peer"
    )
    assert store.volumes == {}  # no partial volume under the content's name
    assert lv.conn.streams[0].aborted and not lv.conn.streams[0].finished


def test_a_failed_finish_deletes_the_volume_too(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    image = _file(tmp_path, "img.qcow2", b"y" * 5000)
    lv.conn.next_stream = lambda stream: stream.fail.update(
        finish=FakeLibvirtError("storage volume upload failed")
    )
    with pytest.raises(CcloudvmError, match="could not upload img.qcow2: storage volume upload"):
        libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    assert store.volumes == {}


def test_an_interrupted_upload_deletes_its_volume_and_goes_on(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    image = _file(tmp_path, "img.qcow2", b"z" * (2 * STREAM_BUF_SIZE))
    lv.conn.next_stream = lambda stream: stream.fail.update(send=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    assert store.volumes == {}


def test_a_refused_volume_is_one_line_and_no_stream_is_opened(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    image = _file(tmp_path, "img.qcow2", b"a" * 100)
    store.fail["createXML"] = FakeLibvirtError("Permission denied", VIR_ERR_OPERATION_DENIED)
    with pytest.raises(CcloudvmError) as info:
        libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    assert info.value.message == (
        f"libvirt at {SYSTEM} does not allow us to make a volume for img.qcow2: Permission denied"
    )
    assert lv.conn.streams == []


def test_a_full_pool_is_said_before_anything_is_made(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    image = _file(tmp_path, "img.qcow2", b"b" * (3 << 20))
    store.available = 1 << 20
    with pytest.raises(CcloudvmError) as info:
        libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    assert info.value.message == (
        f"the storage pool 'ccloudvm' at {SYSTEM} is full: 3 MiB needed, 1 MiB free"
    )
    assert info.value.hint is not None and "virsh vol-list ccloudvm" in info.value.hint
    assert not any(c[0] == "createXML" for c in store.calls)
    assert lv.conn.streams == []


def test_a_pool_with_just_room_enough_takes_the_file(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    image = _file(tmp_path, "img.qcow2", b"c" * 4096)
    store.available = 4096
    libvirt_storage.upload(lv, lv.conn, store, image, SYSTEM)
    assert volume_name(image) in store.volumes


# --- the disk and removal -------------------------------------------------------------


@needs_validator
def test_the_disk_is_a_qcow2_volume_backed_by_the_images(
    lv: FakeLibvirt, store: FakePool, tmp_path: Path
) -> None:
    path = libvirt_storage.disk(lv, store, "dev-disk.qcow2", "/srv/pool/abc-img", 8 << 30, SYSTEM)
    assert path == "/srv/pool/dev-disk.qcow2"
    xml = store.volumes["dev-disk.qcow2"].xml
    root = ET.fromstring(xml)
    assert root.findtext("capacity") == str(8 << 30)
    assert root.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.findtext("backingStore/path") == "/srv/pool/abc-img"
    assert root.find("backingStore/format").get("type") == "qcow2"  # type: ignore[union-attr]
    validate(xml, "storagevol", tmp_path)


def test_an_existing_disk_is_kept(lv: FakeLibvirt, store: FakePool) -> None:
    libvirt_storage.disk(lv, store, "dev-disk.qcow2", "/srv/pool/a", 8 << 30, SYSTEM)
    kept = store.volumes["dev-disk.qcow2"]
    kept.data += b"the guest's files"
    again = libvirt_storage.disk(lv, store, "dev-disk.qcow2", "/srv/pool/a", 8 << 30, SYSTEM)
    assert again == kept.path() and store.volumes["dev-disk.qcow2"] is kept
    assert [c[0] for c in store.calls].count("createXML") == 1


def test_a_refused_disk_is_one_line(lv: FakeLibvirt, store: FakePool) -> None:
    store.fail["createXML"] = FakeLibvirtError("no space left on device")
    with pytest.raises(CcloudvmError) as info:
        libvirt_storage.disk(lv, store, "dev-disk.qcow2", "/srv/pool/a", 8 << 30, SYSTEM)
    assert info.value.message == (
        f"libvirt at {SYSTEM} could not make the disk dev-disk.qcow2: no space left on device"
    )


def test_remove_deletes_the_named_volumes_that_exist(lv: FakeLibvirt, store: FakePool) -> None:
    for name in ("dev-disk.qcow2", "seed", "image"):
        store.createXML(f"<volume><name>{name}</name></volume>", 0)
    libvirt_storage.remove(lv, store, ["dev-disk.qcow2", "seed", "never-made"])
    assert list(store.volumes) == ["image"]


def test_remove_is_best_effort(lv: FakeLibvirt, store: FakePool) -> None:
    made = store.createXML("<volume><name>dev-disk.qcow2</name></volume>", 0)
    made.fail["delete"] = FakeLibvirtError("volume is in use")
    libvirt_storage.remove(lv, store, ["dev-disk.qcow2"])  # no error
    store.lookup_error = FakeLibvirtError("connection closed")
    libvirt_storage.remove(lv, store, ["dev-disk.qcow2"])  # no error either


# --- the console ----------------------------------------------------------------------


def _wait_for(predicate: object, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the console copy did not finish"
        time.sleep(0.01)


def _tap(lv: FakeLibvirt, log: Path, stream_setup: object) -> tuple[ConsoleTap, FakeDomain]:
    dom = FakeDomain("<domain/>", active=True)
    lv.conn.next_stream = stream_setup  # type: ignore[assignment]
    tap = ConsoleTap(lv, lv.conn, dom, log)
    return tap, dom


def test_the_console_is_copied_into_the_log_until_its_end(lv: FakeLibvirt, tmp_path: Path) -> None:
    log = _file(tmp_path, "serial.log", b"before\n")

    def setup(stream: FakeStream) -> None:
        stream.incoming = [b"[    0.0] Linux version\n", b"ccloudvm-", b"ready\n"]

    tap, dom = _tap(lv, log, setup)
    assert dom.calls == [("openConsole", None, 1)]  # the serial console, forced
    assert dom.console is lv.conn.streams[0]
    tap._thread.join(5)
    assert not tap._thread.is_alive()
    assert log.read_bytes() == b"before\n[    0.0] Linux version\nccloudvm-ready\n"


def test_the_console_copy_stops_at_a_stream_error(lv: FakeLibvirt, tmp_path: Path) -> None:
    log = tmp_path / "serial.log"

    def setup(stream: FakeStream) -> None:
        stream.incoming = [b"boot\n"]
        stream.end = FakeLibvirtError("stream had I/O failure: domain is not running")

    tap, _dom = _tap(lv, log, setup)
    _wait_for(lambda: not tap._thread.is_alive())
    assert log.read_bytes() == b"boot\n"
    assert lv.conn.streams[0].calls == [("recv", 65536), ("recv", 65536)]


def test_a_console_that_cannot_be_opened_raises_libvirts_error(
    lv: FakeLibvirt, tmp_path: Path
) -> None:
    dom = FakeDomain("<domain/>", active=True)
    dom.fail["openConsole"] = FakeLibvirtError("operation failed: Active console session exists")
    with pytest.raises(FakeLibvirtError, match="Active console session"):
        ConsoleTap(lv, lv.conn, dom, tmp_path / "serial.log")
    assert not (tmp_path / "serial.log").exists()
