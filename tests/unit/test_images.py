"""Image definitions and the image cache, with downloads from a real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccloudvm.core.errors import CcloudvmError, NotFoundError, UsageError
from ccloudvm.images import build as imagebuild
from ccloudvm.images import catalog as images
from ccloudvm.images.build import BuildRecipe
from ccloudvm.state.paths import StateDir
from tests.support.httpserver import FileServer, serve_directory

pytestmark = pytest.mark.usefixtures("no_host_proxy")


@pytest.fixture()
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.user_images.mkdir()
    return state


@pytest.fixture()
def www(tmp_path: Path) -> Iterator[tuple[str, FileServer, Path]]:
    """A served folder with a tiny qcow2 disk, a kernel, an initrd and SHA256SUMS."""
    root = tmp_path / "www"
    root.mkdir()
    subprocess.run(  # noqa: S603 - fixed argv
        ["qemu-img", "create", "-q", "-f", "qcow2", str(root / "tiny.qcow2"), "16M"], check=True
    )
    (root / "vmlinuz-6.1").write_bytes(b"kernel" * 1000)
    (root / "initrd-6.1").write_bytes(b"initrd" * 1000)
    _write_sums(root)
    with serve_directory(root) as (base, server):
        yield base, server, root


def _write_sums(root: Path) -> None:
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in sorted(root.iterdir())
        if p.name != "SHA256SUMS"
    ]
    (root / "SHA256SUMS").write_text("".join(lines))


def _define(state: StateDir, name: str, text: str) -> None:
    (state.user_images / f"{name}.yaml").write_text(text)


def _download_def(base: str, kernel: bool = False) -> str:
    text = f"description: tiny test image\nsource:\n  disk: {base}/tiny.qcow2\n"
    text += f"  sha256sums: {base}/SHA256SUMS\n"
    if kernel:
        text += f"  kernel: {base}/vmlinuz-6.1\n  initrd: {base}/initrd-6.1\n"
        text += "boot:\n  cmdline: root=/dev/vda console=ttyS0\n"
    return text


def test_bundled_definitions_parse(state: StateDir) -> None:
    found = {d.name: d for d in images.list_definitions(state)}
    debian, ubuntu = found["debian-12"], found["ubuntu-24.04"]
    assert debian.kind == "build" and debian.origin == "bundled"
    assert debian.build is not None and "linux-image-amd64" in debian.build.packages
    assert debian.cmdline is not None and "root=/dev/vda" in debian.cmdline
    assert ubuntu.kind == "download" and ubuntu.source is not None
    assert ubuntu.source.sha256sums is not None
    assert len(debian.key) == 16 and debian.key != ubuntu.key
    # Our own image's cloud-init unit can wait for a seed; a stock cloud image's cannot.
    assert debian.warm_boot and not ubuntu.warm_boot


def test_user_definition_overrides_bundled(state: StateDir) -> None:
    _define(state, "debian-12", "description: mine\nbuild:\n  suite: trixie\n  packages: [bash]\n")
    definition = images.load_definition(state, "debian-12")
    assert (definition.origin, definition.description) == ("user", "mine")
    listed = [d for d in images.list_definitions(state) if d.name == "debian-12"]
    assert [d.origin for d in listed] == ["user"]


def test_unknown_name_lists_the_available_ones(state: StateDir) -> None:
    with pytest.raises(NotFoundError) as missing:
        images.load_definition(state, "plan9")
    assert "debian-12" in str(missing.value) and "ubuntu-24.04" in str(missing.value)
    with pytest.raises(NotFoundError):
        images.load_definition(state, "../../etc/passwd")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("description: x\n", "exactly one of"),
        ("source:\n  disk: ftp://x/y.img\n  sha256sums: http://x/S\n", "http(s) URL"),
        ("source:\n  disk: http://x/y.img\n", "needs a checksum"),
        ("source:\n  disk: http://x/y.img\n  sha256: {disk: nothex}\n", "64 hex"),
        ("build:\n  suite: bookworm\n  packages: ['bash; rm -rf /']\n", "invalid entries"),
        ("build:\n  suite: bookworm\n  packages: [bash]\n  files: {etc/x: y}\n", "absolute"),
        ("build:\n  suite: bookworm\n  packages: [bash]\n  colour: red\n", "unknown key"),
        (
            "source:\n  disk: http://x/y.img\n  sha256sums: http://x/S\nboot: {cmdline: q}\n",
            "kernel",
        ),
        ("build:\n  suite: bookworm\n  packages: [bash]\nboot: {warm: maybe}\n", "boot.warm"),
    ],
)
def test_bad_definitions_are_usage_errors(state: StateDir, text: str, complaint: str) -> None:
    _define(state, "bad", text)
    with pytest.raises(UsageError) as bad:
        images.load_definition(state, "bad")
    message = str(bad.value).replace("every file needs a checksum", "needs a checksum")
    assert complaint in message
    assert "bad.yaml" in message


def test_key_follows_the_content(state: StateDir) -> None:
    recipe = "build:\n  suite: bookworm\n  packages: [bash, sudo]\n"
    _define(state, "a", "description: one\n" + recipe)
    _define(
        state, "b", "description: two, same recipe\n" + recipe.replace("bash, sudo", "sudo, bash")
    )
    _define(state, "c", recipe.replace("sudo", "kmod"))
    a, b, c = (images.load_definition(state, n) for n in "abc")
    assert a.key == b.key != c.key


def test_download_fills_the_cache_once(state: StateDir, www: tuple[str, FileServer, Path]) -> None:
    base, server, root = www
    _define(state, "tiny", _download_def(base, kernel=True))
    image = images.ensure_image(state, "tiny")
    assert image.kind == "downloaded" and image.name == "tiny"
    assert image.directory == state.cache / "images" / f"tiny-{image.key}"
    assert image.disk.read_bytes() == (root / "tiny.qcow2").read_bytes()
    assert image.kernel is not None and image.kernel.read_bytes() == b"kernel" * 1000
    assert image.initrd is not None and image.cmdline == "root=/dev/vda console=ttyS0"
    meta = json.loads((image.directory / "image.json").read_text())
    assert meta["sources"]["disk"] == f"{base}/tiny.qcow2"
    assert meta["sha256"]["disk"] == hashlib.sha256(image.disk.read_bytes()).hexdigest()
    assert list((state.cache / "tmp").iterdir()) == []
    assert not (state.cache / "downloads" / f"tiny-{image.key}").exists()

    seen = len(server.requests)
    assert images.ensure_image(state, "tiny") == image
    assert len(server.requests) == seen  # served from the cache, no network
    assert images.cached_images(state) == [image]


def test_changed_definition_gets_a_new_cache_entry(
    state: StateDir, www: tuple[str, FileServer, Path]
) -> None:
    base, _, _ = www
    _define(state, "tiny", _download_def(base))
    first = images.ensure_image(state, "tiny")
    _define(state, "tiny", _download_def(base, kernel=True))
    second = images.ensure_image(state, "tiny")
    assert first.key != second.key and first.kernel is None and second.kernel is not None
    assert {i.key for i in images.cached_images(state)} == {first.key, second.key}


def test_raw_disk_is_converted_to_qcow2(state: StateDir, www: tuple[str, FileServer, Path]) -> None:
    base, _, root = www
    (root / "plain.raw").write_bytes(b"\0" * (1 << 20))
    _write_sums(root)
    _define(state, "raw", f"source:\n  disk: {base}/plain.raw\n  sha256sums: {base}/SHA256SUMS\n")
    image = images.ensure_image(state, "raw")
    assert image.disk.read_bytes()[:4] == b"QFI\xfb"  # qcow2 magic


def test_checksum_mismatch_caches_nothing(
    state: StateDir, www: tuple[str, FileServer, Path]
) -> None:
    base, _, _ = www
    wrong = "0" * 64
    _define(state, "tiny", f"source:\n  disk: {base}/tiny.qcow2\n  sha256: {{disk: '{wrong}'}}\n")
    with pytest.raises(CcloudvmError, match="checksum mismatch"):
        images.ensure_image(state, "tiny")
    assert images.cached_images(state) == []
    assert list((state.cache / "images").glob("*")) == []
    assert list((state.cache / "tmp").iterdir()) == []
    assert list((state.cache / "downloads").rglob("*")) == []


def test_missing_checksum_in_sums_is_explained(
    state: StateDir, www: tuple[str, FileServer, Path]
) -> None:
    base, _, root = www
    (root / "unlisted.img").write_bytes(b"x")
    _define(state, "u", f"source:\n  disk: {base}/unlisted.img\n  sha256sums: {base}/SHA256SUMS\n")
    with pytest.raises(CcloudvmError, match="lists no checksum for unlisted.img"):
        images.ensure_image(state, "u")


def _fake_build(recipe: BuildRecipe, out_dir: Path, *, name: str = "image") -> None:
    (out_dir / "disk.qcow2").write_bytes(b"QFI\xfb fake disk for " + recipe.suite.encode())
    (out_dir / "vmlinuz").write_bytes(b"k")
    (out_dir / "initrd.img").write_bytes(b"i")


def test_build_recipe_is_built_once_and_cached(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def build(recipe: BuildRecipe, out_dir: Path, *, name: str = "image") -> None:
        calls.append(name)
        _fake_build(recipe, out_dir, name=name)

    monkeypatch.setattr(imagebuild, "build_image", build)
    image = images.ensure_image(state, "debian-12")
    assert calls == ["debian-12"]
    assert image.kind == "built" and image.kernel is not None and image.initrd is not None
    assert image.cmdline is not None and "root=/dev/vda" in image.cmdline
    meta = json.loads((image.directory / "image.json").read_text())
    assert meta["recipe"]["suite"] == "bookworm" and meta["recipe_hash"] == image.key
    assert images.ensure_image(state, "debian-12") == image
    assert calls == ["debian-12"]


@pytest.mark.parametrize("failure", [CcloudvmError("mmdebstrap failed"), KeyboardInterrupt()])
def test_failed_build_leaves_nothing(
    state: StateDir, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    def build(recipe: BuildRecipe, out_dir: Path, *, name: str = "image") -> None:
        (out_dir / "disk.qcow2").write_bytes(b"half")
        raise failure

    monkeypatch.setattr(imagebuild, "build_image", build)
    with pytest.raises(type(failure)):
        images.ensure_image(state, "debian-12")
    assert images.cached_images(state) == []
    assert list((state.cache / "tmp").iterdir()) == []


def test_stale_tmp_dirs_are_removed_by_the_next_run(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = state.cache / "tmp" / "image-debian-12-killed"
    (stale / "root" / "etc").mkdir(parents=True)
    monkeypatch.setattr(imagebuild, "build_image", _fake_build)
    images.ensure_image(state, "debian-12")
    assert not stale.exists()


def test_export_writes_files_and_checksums(
    state: StateDir, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(imagebuild, "build_image", _fake_build)
    image = images.ensure_image(state, "debian-12")
    out = tmp_path / "export"
    images.export_image(image, out)
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split()[1] for line in sums) == ["disk.qcow2", "initrd.img", "vmlinuz"]
    for line in sums:
        digest, filename = line.split()
        assert hashlib.sha256((out / filename).read_bytes()).hexdigest() == digest


def test_export_refuses_a_damaged_cache(
    state: StateDir, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(imagebuild, "build_image", _fake_build)
    image = images.ensure_image(state, "debian-12")
    image.disk.write_bytes(b"bit rot")
    with pytest.raises(CcloudvmError, match="damaged"):
        images.export_image(image, tmp_path / "export")
    assert not (tmp_path / "export" / "disk.qcow2").exists()


def test_saved_image_is_found_by_name(state: StateDir, tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "8M"], check=True)  # noqa: S603,S607
    subprocess.run(  # noqa: S603
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],  # noqa: S607
        check=True,
    )
    saved = images.save_image(state, "my-dev", overlay, cmdline="root=/dev/vda", warm_boot=True)
    assert saved.kind == "saved" and saved.cmdline == "root=/dev/vda"
    assert saved.warm_boot, "an image saved from a warm-capable instance stays warm-capable"
    info = subprocess.run(  # noqa: S603
        ["qemu-img", "info", "--output=json", str(saved.disk)],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "backing-filename" not in json.loads(info)  # flattened: independent of base
    assert images.ensure_image(state, "my-dev") == saved


def test_saved_image_is_compressed(state: StateDir, tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"ccloudvm " * (8 * 2**20 // 9))  # 8 MiB that compress well
    saved = images.save_image(state, "packed", raw)
    assert saved.disk.stat().st_size < 2**20, "image save writes a compressed qcow2"
