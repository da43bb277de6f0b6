"""Image definitions (YAML): where they are found, what they say, their cache key.

A definition is looked up by name, first in <state>/images/NAME.yaml (the user's), then
in the bundled images/ folder. It either downloads a disk (checksum-verified) or builds
one locally from a recipe (ccloudvm.images.build).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ccloudvm.core.errors import CcloudvmError, NotFoundError, UsageError
from ccloudvm.images.recipe import RECIPE_FORMAT, BuildRecipe
from ccloudvm.state import paths
from ccloudvm.state.paths import StateDir

DISK = "disk.qcow2"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
# Where each downloadable role lands in the cache directory.
ROLE_FILES = {"disk": DISK, "kernel": KERNEL, "initrd": INITRD}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class DownloadSource:
    urls: Mapping[str, str]  # role (disk, kernel, initrd) -> URL
    sha256sums: str | None  # URL of a SHA256SUMS file
    sha256: Mapping[str, str] = field(default_factory=dict)  # role -> digest, wins over sums

    def canonical(self) -> dict[str, Any]:
        return {
            "urls": dict(self.urls),
            "sha256sums": self.sha256sums,
            "sha256": {k: v.lower() for k, v in self.sha256.items()},
        }


@dataclass(frozen=True)
class ImageDefinition:
    name: str
    description: str
    origin: str  # "bundled" | "user"
    path: Path
    source: DownloadSource | None
    build: BuildRecipe | None
    cmdline: str | None
    warm_boot: bool = False

    @property
    def kind(self) -> str:
        return "build" if self.build is not None else "download"

    @property
    def key(self) -> str:
        if self.build is not None:
            content: dict[str, Any] = {
                "build": self.build.canonical(),
                "format": RECIPE_FORMAT,
            }
        else:
            assert self.source is not None
            content = {"download": self.source.canonical()}
        return _hash_json(content)[:16]


# ---------------------------------------------------------------- definitions


def load_definition(state: StateDir, name: str) -> ImageDefinition:
    """The definition called `name`: the user's own first, then the bundled one."""
    if _NAME.match(name):
        for origin, folder in _definition_dirs(state):
            path = folder / f"{name}.yaml"
            if path.is_file():
                return _parse_definition(name, origin, path)
    available = ", ".join(d.name for d in list_definitions(state)) or "none"
    raise NotFoundError(
        f"no image definition called {name!r} (available: {available})",
        hint=f"add your own as {state.user_images / (name + '.yaml')}",
    )


def list_definitions(
    state: StateDir, broken: list[CcloudvmError] | None = None
) -> list[ImageDefinition]:
    """All definitions by name; a user's definition hides a bundled one of the same name.

    A definition that does not parse is left out (its error appended to `broken`): one
    bad file must not hide the others (issue 8)."""
    found: dict[str, ImageDefinition] = {}
    seen: set[str] = set()
    for origin, folder in _definition_dirs(state):
        for path in sorted(folder.glob("*.yaml")):
            if path.stem not in seen and _NAME.match(path.stem):
                seen.add(path.stem)
                try:
                    found[path.stem] = _parse_definition(path.stem, origin, path)
                except CcloudvmError as exc:
                    if broken is not None:
                        broken.append(exc)
    return [found[name] for name in sorted(found)]


def _definition_dirs(state: StateDir) -> Iterator[tuple[str, Path]]:
    if state.user_images.is_dir():
        yield "user", state.user_images
    try:
        yield "bundled", paths.resource_dir("images")
    except FileNotFoundError:
        return


def _parse_definition(name: str, origin: str, path: Path) -> ImageDefinition:
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _bad(where, f"cannot be read: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise _bad(where, "is not a mapping")
    _only_keys(data, {"description", "source", "build", "boot"}, where)
    if ("source" in data) == ("build" in data):
        raise _bad(where, "needs exactly one of 'source' (download) or 'build' (local recipe)")
    boot = data.get("boot") or {}
    if not isinstance(boot, dict):
        raise _bad(where, "'boot' is not a mapping")
    _only_keys(boot, {"cmdline", "warm"}, f"{where}: boot")
    warm = boot.get("warm", False)
    if not isinstance(warm, bool):
        raise _bad(where, "'boot.warm' is not true or false")
    cmdline = boot.get("cmdline")
    if cmdline is not None and not isinstance(cmdline, str):
        raise _bad(where, "'boot.cmdline' is not a string")
    source = _parse_source(data["source"], where) if "source" in data else None
    build = _parse_recipe(data["build"], where) if "build" in data else None
    if source is not None and cmdline and "kernel" not in source.urls:
        raise _bad(where, "'boot.cmdline' needs 'source.kernel' (direct kernel boot)")
    return ImageDefinition(
        name=name,
        description=str(data.get("description") or ""),
        origin=origin,
        path=path,
        source=source,
        build=build,
        cmdline=cmdline,
        warm_boot=warm,
    )


def _parse_source(data: object, where: str) -> DownloadSource:
    if not isinstance(data, dict):
        raise _bad(where, "'source' is not a mapping")
    _only_keys(data, {*ROLE_FILES, "sha256sums", "sha256"}, f"{where}: source")
    urls = {role: data[role] for role in ROLE_FILES if role in data}
    if "disk" not in urls:
        raise _bad(where, "'source.disk' (the disk image URL) is missing")
    if ("kernel" in urls) != ("initrd" in urls):
        raise _bad(where, "'source.kernel' and 'source.initrd' go together")
    for role, url in urls.items():
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise _bad(where, f"'source.{role}' is not an http(s) URL")
    digests = data.get("sha256") or {}
    if not isinstance(digests, dict) or not all(
        k in urls and isinstance(v, str) and _HEX64.match(v) for k, v in digests.items()
    ):
        raise _bad(where, "'source.sha256' must map disk/kernel/initrd to 64 hex digits")
    sums = data.get("sha256sums")
    if sums is not None and (not isinstance(sums, str) or not sums.startswith("http")):
        raise _bad(where, "'source.sha256sums' is not an http(s) URL")
    if sums is None and set(digests) != set(urls):
        raise _bad(where, "every file needs a checksum: add 'sha256sums' or 'sha256'")
    return DownloadSource(urls=urls, sha256sums=sums, sha256=digests)


def _parse_recipe(data: object, where: str) -> BuildRecipe:
    if not isinstance(data, dict):
        raise _bad(where, "'build' is not a mapping")
    try:
        return BuildRecipe.from_mapping(data)
    except ValueError as exc:
        raise _bad(where, f"build: {exc}") from exc


def _only_keys(data: Mapping[str, object], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(unknown)}",
            hint=f"allowed: {', '.join(sorted(allowed))}",
        )


def _bad(where: str, problem: str) -> UsageError:
    return UsageError(f"image definition {where} {problem}", hint="fix the file and retry")


def _hash_json(content: object) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
