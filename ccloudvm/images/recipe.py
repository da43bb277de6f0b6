"""A build recipe: what an image definition's `build:` says, checked (ccloudvm.images.build
builds it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ccloudvm.images import recipe_files

# Part of every build recipe's cache key: bump it when the builder's output changes.
RECIPE_FORMAT = 1

_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")
_SUITE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_MODULE = re.compile(r"^[A-Za-z0-9_-]+$")
_UNIT = re.compile(r"^[A-Za-z0-9@_.:-]+$")
_MIRROR = re.compile(r"^(https?|file)://\S+$")


@dataclass(frozen=True)
class BuildRecipe:
    suite: str
    packages: tuple[str, ...]
    mirror: str | None = None
    initrd_modules: tuple[str, ...] = ()
    size_gib: int = 4
    files: Mapping[str, str] = field(default_factory=dict)  # absolute path -> content
    services: tuple[str, ...] = ()  # systemd units to enable
    masked: tuple[str, ...] = ()  # systemd units that must never run

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BuildRecipe:
        """Parse and check a recipe; ValueError names the offending key."""
        allowed = {
            "suite", "mirror", "packages", "initrd_modules", "size_gib", "files", "services", "masked",
        }  # fmt: skip
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}")
        suite = data.get("suite")
        if not isinstance(suite, str) or not _SUITE.match(suite):
            raise ValueError("'suite' must be a Debian suite name like bookworm")
        mirror = data.get("mirror")
        if mirror is not None and (not isinstance(mirror, str) or not _MIRROR.match(mirror)):
            raise ValueError("'mirror' must be an http(s):// or file:// URL")
        size = data.get("size_gib", 4)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 1024:
            raise ValueError("'size_gib' must be a whole number from 1 to 1024")
        files = recipe_files.file_texts(data.get("files") or {})
        for path in files:
            _guest_path(path)
        return cls(
            suite=suite,
            mirror=mirror,
            packages=_names(data.get("packages"), "packages", _PACKAGE, required=True),
            initrd_modules=_names(data.get("initrd_modules"), "initrd_modules", _MODULE),
            size_gib=size,
            files=dict(files),
            services=_names(data.get("services"), "services", _UNIT),
            masked=_names(data.get("masked"), "masked", _UNIT),
        )

    def canonical(self) -> dict[str, Any]:
        """Everything that decides the built image's content, in a stable form."""
        return {
            "suite": self.suite,
            "mirror": self.mirror,
            "packages": sorted(self.packages),
            "initrd_modules": list(self.initrd_modules),
            "size_gib": self.size_gib,
            "files": dict(sorted(self.files.items())),
            "services": sorted(self.services),
            "masked": sorted(self.masked),
        }


def _names(
    value: object, key: str, pattern: re.Pattern[str], required: bool = False
) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value and required:
        raise ValueError(
            f"'{key}' must be a non-empty list" if required else f"'{key}' must be a list"
        )
    bad = [item for item in value if not isinstance(item, str) or not pattern.match(item)]
    if bad:
        raise ValueError(f"'{key}' has invalid entries: {', '.join(map(str, bad))}")
    return tuple(value)


def _guest_path(path: str) -> PurePosixPath:
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2:
        raise ValueError(f"'files' path {path!r} must be absolute, below /, without '..'")
    return pure
