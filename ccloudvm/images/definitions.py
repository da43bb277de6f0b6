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

from ccloudvm.core.config import YamlDoc, check
from ccloudvm.core.errors import CcloudvmError, NotFoundError, UsageError
from ccloudvm.images.model import Boot, ImageFile
from ccloudvm.images.recipe import RECIPE_FORMAT, BuildRecipe
from ccloudvm.state import paths
from ccloudvm.state.paths import StateDir

DISK = "disk.qcow2"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
# Where each downloadable role lands in the cache directory.
ROLE_FILES = {"disk": DISK, "kernel": KERNEL, "initrd": INITRD}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
FIX = "fix the file and retry"


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
    """Read and check one definition; a ConfigError lists every problem, one line each."""
    label = f"image definition {path}"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{label} cannot be read: {exc}", hint=FIX) from exc
    try:
        doc = YamlDoc(text, label)
    except UsageError as exc:
        raise UsageError(exc.message, hint=FIX) from exc
    if not isinstance(doc.data, dict):
        raise UsageError(f"{label} is not a mapping", hint=FIX)
    spec = check(ImageFile, doc.data, doc, noun="key", hint=FIX)
    boot = spec.boot or Boot()
    source = None
    if spec.source is not None:
        source = DownloadSource(
            urls=spec.source.urls,
            sha256sums=spec.source.sha256sums,
            sha256={str(role): digest for role, digest in (spec.source.sha256 or {}).items()},
        )
    return ImageDefinition(
        name=name,
        description=spec.description or "",
        origin=origin,
        path=path,
        source=source,
        build=spec.build,
        cmdline=boot.cmdline,
        warm_boot=boot.warm,
    )


def _hash_json(content: object) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
