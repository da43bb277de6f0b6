"""Base images: definitions (YAML), and the content-addressed cache they end up in.

A definition is looked up by name, first in <state>/images/NAME.yaml (the user's), then
in the bundled images/ folder. It either downloads a disk (checksum-verified) or builds
one locally from a recipe (ccloudvm.images.build).

Cache layout, one directory per image version:
    <state>/cache/images/<name>-<key>/  disk.qcow2 [vmlinuz initrd.img] image.json
`key` is the first 16 hex digits of a sha256 over what defines the content (the recipe,
or the source URLs and checksums), so a changed definition gives a new directory and an
unchanged one is never fetched again. Each directory is assembled under <state>/cache/tmp/
and renamed into place in one step: a directory in images/ is always complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ccloudvm.core import proc, ui
from ccloudvm.core.errors import CcloudvmError, NotFoundError, UsageError
from ccloudvm.images import build as imagebuild
from ccloudvm.images import download
from ccloudvm.images.definitions import (
    _NAME,
    DISK,
    INITRD,
    KERNEL,
    ROLE_FILES,
    ImageDefinition,
    _hash_json,
)

# The definitions' public names, as ccloudvm.images.catalog has always offered them.
from ccloudvm.images.definitions import DownloadSource as DownloadSource
from ccloudvm.images.definitions import list_definitions as list_definitions
from ccloudvm.images.definitions import load_definition as load_definition
from ccloudvm.state import paths
from ccloudvm.state.paths import StateDir

METADATA = "image.json"


@dataclass(frozen=True)
class BaseImage:
    name: str
    key: str
    directory: Path
    disk: Path
    kernel: Path | None
    initrd: Path | None
    cmdline: str | None
    kind: str  # "built" | "downloaded" | "saved"
    warm_boot: bool = False  # its cloud-init unit waits for a seed (ccloudvm.vm.warmboot)


# ---------------------------------------------------------------- the cache


def images_dir(state: StateDir) -> Path:
    return state.cache / "images"


def ensure_image(state: StateDir, name: str) -> BaseImage:
    """The cached image for `name`; downloaded or built first if it is not cached yet."""
    try:
        definition = load_definition(state, name)
    except NotFoundError:
        saved = [i for i in cached_images(state) if i.name == name and i.kind == "saved"]
        if saved:
            return saved[-1]
        raise
    directory = images_dir(state) / f"{definition.name}-{definition.key}"
    if not (directory / METADATA).is_file():
        with _cache_lock(state):
            if not (directory / METADATA).is_file():  # another process may have made it
                _remove_stale_tmp(state)
                _assemble(state, definition, directory)
    return _read_image(directory, cmdline=definition.cmdline, warm_boot=definition.warm_boot)


def cached_images(state: StateDir, broken: list[str] | None = None) -> list[BaseImage]:
    """Every complete image in the cache, oldest first.

    A folder is an image only when its image.json (written last, after every file was
    verified) reads back with its disk present. Anything else is left out, and named in
    `broken` with what to do about it: one damaged entry never hides the others."""
    folder = images_dir(state)
    if not folder.is_dir():
        return []
    found: list[tuple[float, BaseImage]] = []
    for directory in sorted(folder.iterdir()):
        try:
            created = float(_read_meta(directory).get("created", 0))
            image = _read_image(directory)
            if not image.disk.is_file():
                raise ValueError(f"{DISK} is missing")
            found.append((created, image))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if broken is not None:
                broken.append(
                    f"cached image {directory} is damaged ({exc}); remove that folder and "
                    "let ccloudvm fetch or build the image again"
                )
    return [image for _, image in sorted(found, key=lambda pair: (pair[0], pair[1].name))]


def find_cached(state: StateDir, disk: str) -> BaseImage | None:
    """The cached image whose disk is `disk` (an instance's record of its base), if any."""
    directory = Path(disk).parent
    if directory.parent != images_dir(state) or not (directory / METADATA).is_file():
        return None
    try:
        return _read_image(directory)
    except (OSError, ValueError, KeyError):
        return None


def remove_image(image: BaseImage) -> None:
    """Delete one cached image and its warm-boot snapshots (instances made from it need
    it: check before calling).

    All or nothing: when any file of either cannot be deleted (an earlier run as root left
    it, say), nothing is touched. Otherwise both are renamed aside into <cache>/tmp (one
    rename each, undone if the second fails), so the image is gone at once, then deleted.
    """
    cache = image.directory.parent.parent
    warm = cache / "warm" / image.directory.name
    targets = [p for p in (image.directory, warm) if p.exists() or p.is_symlink()]
    for target in targets:
        blocker = imagebuild.removal_blocker(target)
        if blocker is not None:
            try:
                owner = f"uid {blocker.stat().st_uid}"
            except OSError:
                owner = "another user"
            raise CcloudvmError(
                f"cannot remove image {image.name}: {blocker} belongs to {owner} and this "
                "process may not delete what is in it; nothing was removed",
                hint=f"give it back (sudo chown -R {os.getuid()}:{os.getgid()} {cache}) "
                "or delete it as root (sudo rm -rf " + " ".join(map(str, targets)) + ")",
            )
    trash = cache / "tmp"
    trash.mkdir(parents=True, exist_ok=True)
    moved: list[tuple[Path, Path]] = []
    try:
        for target in targets:
            # The "image-" prefix: a removal cut short is cleaned up like a stale build.
            aside = Path(tempfile.mkdtemp(prefix=f"image-rm-{image.name}-", dir=trash))
            moved.append((target, aside))
            os.rename(target, aside / target.parent.name)
    except OSError as exc:
        for target, aside in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(aside / target.parent.name, target)
            with contextlib.suppress(OSError):
                aside.rmdir()
        raise CcloudvmError(
            f"cannot remove image {image.name}: {exc}; nothing was removed"
        ) from exc
    for _target, aside in moved:
        imagebuild.remove_tree(aside)


def save_image(
    state: StateDir,
    name: str,
    disk: Path,
    *,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str | None = None,
    warm_boot: bool = False,
) -> BaseImage:
    """Store an instance's disk as image `name` (flattened: no backing file needed)."""
    if not _NAME.match(name):
        raise UsageError(f"{name!r} is not a valid image name", hint="use letters, digits, . _ -")
    state.cache.mkdir(parents=True, exist_ok=True)
    with _cache_lock(state):
        _remove_stale_tmp(state)
        with _staging(state, name) as tmp:
            with ui.step(f"Saving image {name}"):
                # Compressed: a saved image is read once per instance, stored for long.
                proc.run(["qemu-img", "convert", "-c", "-O", "qcow2", disk, tmp / DISK])
                for src, dst in ((kernel, KERNEL), (initrd, INITRD)):
                    if src is not None:
                        shutil.copyfile(src, tmp / dst)
            files = _describe_files(tmp)
            key = _hash_json(files)[:16]
            meta = {
                "name": name,
                "kind": "saved",
                "key": key,
                "cmdline": cmdline,
                "warm_boot": warm_boot,
            }
            directory = images_dir(state) / f"{name}-{key}"
            if not directory.exists():
                _install(tmp, directory, meta, files)
    return _read_image(directory)


def export_image(image: BaseImage, out_dir: Path) -> None:
    """Copy the image's files to `out_dir` with a SHA256SUMS, ready to serve over HTTP."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = _read_meta(image.directory).get("files", {})
    lines = []
    for src in (image.disk, image.kernel, image.initrd):
        if src is None:
            continue
        digest = _copy_hashing(src, out_dir / src.name)
        expected = recorded.get(src.name, {}).get("sha256")
        if expected and expected != digest:
            (out_dir / src.name).unlink()
            raise CcloudvmError(
                f"cached file {src} is damaged: sha256 {digest}, recorded {expected}",
                hint=f"delete {image.directory} and let ccloudvm fetch or build it again",
            )
        lines.append(f"{digest}  {src.name}\n")
    (out_dir / "SHA256SUMS").write_text("".join(lines))


def _assemble(state: StateDir, definition: ImageDefinition, directory: Path) -> None:
    meta: dict[str, Any] = {
        "name": definition.name,
        "key": definition.key,
        "description": definition.description,
        "cmdline": definition.cmdline,
        "warm_boot": definition.warm_boot,
        "definition": str(definition.path),
    }
    with _staging(state, definition.name) as tmp:
        if definition.build is not None:
            imagebuild.build_image(definition.build, tmp, name=definition.name)
            meta.update(kind="built", recipe=definition.build.canonical())
            meta["recipe_hash"] = definition.key
        else:
            assert definition.source is not None
            meta.update(kind="downloaded", **_download_into(state, definition, tmp))
        _install(tmp, directory, meta, _describe_files(tmp))


def _download_into(state: StateDir, definition: ImageDefinition, tmp: Path) -> dict[str, Any]:
    """Fetch every file of a download source, verified, then move them into `tmp`."""
    source = definition.source
    assert source is not None
    sums = download.fetch_sha256sums(source.sha256sums) if source.sha256sums else {}
    staging = state.cache / "downloads" / f"{definition.name}-{definition.key}"
    fetched: dict[str, Path] = {}
    digests: dict[str, str] = {}
    for role, url in source.urls.items():
        filename = Path(urlsplit(url).path).name or role
        digest = source.sha256.get(role) or sums.get(filename)
        if digest is None:
            raise CcloudvmError(
                f"{source.sha256sums} lists no checksum for {filename}",
                hint=f"give 'source.sha256.{role}' in {definition.path}",
            )
        digests[role] = digest.lower()
        dest = staging / f"{role}-{filename}"
        try:
            fetched[role] = download.download(url, dest, digest, description=f"{role} {filename}")
        except CcloudvmError:
            with contextlib.suppress(OSError):
                staging.rmdir()  # only when empty: a resumable partial file stays
            raise
    for role, path in fetched.items():
        if role == "disk":
            _to_qcow2(path, tmp / DISK)
        else:
            os.replace(path, tmp / ROLE_FILES[role])
    shutil.rmtree(staging, ignore_errors=True)
    return {"sources": dict(source.urls), "sha256sums": source.sha256sums, "sha256": digests}


def _to_qcow2(path: Path, dest: Path) -> None:
    info = json.loads(proc.run(["qemu-img", "info", "--output=json", path]).stdout)
    if info.get("format") == "qcow2":
        os.replace(path, dest)
        return
    with ui.step(f"Converting {path.name} ({info.get('format')}) to qcow2"):
        proc.run(["qemu-img", "convert", "-O", "qcow2", path, dest])
    path.unlink()


def _install(tmp: Path, directory: Path, meta: dict[str, Any], files: dict[str, Any]) -> None:
    """Write image.json last and move the finished directory into the cache in one rename."""
    meta = {**meta, "files": files, "created": time.time()}
    meta["size"] = sum(f["size"] for f in files.values())
    (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tmp.chmod(0o755)  # mkdtemp made it private; images are read by QEMU and maybe others
    directory.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, directory)


@contextmanager
def _staging(state: StateDir, name: str) -> Iterator[Path]:
    """A fresh directory under <cache>/tmp, removed unless it was renamed into the cache."""
    parent = state.cache / "tmp"
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"image-{name}-", dir=parent))
    try:
        yield tmp
    finally:
        _remove_quietly(tmp)


def _cache_lock(state: StateDir) -> contextlib.AbstractContextManager[None]:
    """One process at a time fills the cache; others wait and then find the result."""
    return paths.file_lock(state.cache / "images.lock")


def _remove_stale_tmp(state: StateDir) -> None:
    """Left-overs of an interrupted run (only called while holding the cache lock)."""
    parent = state.cache / "tmp"
    if parent.is_dir():
        for stale in parent.glob("image-*"):
            _remove_quietly(stale)


def _remove_quietly(path: Path) -> None:
    try:
        imagebuild.remove_tree(path)
    except CcloudvmError as exc:
        ui.warn(str(exc))  # never hide the error that got us here behind this one


def _read_meta(directory: Path) -> dict[str, Any]:
    meta = json.loads((directory / METADATA).read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{directory / METADATA} is not a JSON object")
    return meta


def _read_image(
    directory: Path, cmdline: str | None = None, warm_boot: bool | None = None
) -> BaseImage:
    meta = _read_meta(directory)
    kernel, initrd = directory / KERNEL, directory / INITRD
    return BaseImage(
        name=str(meta["name"]),
        key=str(meta["key"]),
        directory=directory,
        disk=directory / DISK,
        kernel=kernel if kernel.is_file() else None,
        initrd=initrd if initrd.is_file() else None,
        cmdline=cmdline if cmdline is not None else meta.get("cmdline"),
        kind=str(meta["kind"]),
        warm_boot=bool(meta.get("warm_boot")) if warm_boot is None else warm_boot,
    )


def _describe_files(directory: Path) -> dict[str, Any]:
    return {
        name: {
            "sha256": download.sha256_file(directory / name),
            "size": (directory / name).stat().st_size,
        }
        for name in (DISK, KERNEL, INITRD)
        if (directory / name).is_file()
    }


def _copy_hashing(src: Path, dest: Path) -> str:
    digest = hashlib.sha256()
    with src.open("rb") as reader, dest.open("wb") as writer:
        while chunk := reader.read(download.CHUNK_SIZE):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()
