"""A build recipe, declared once: what an image definition's `build:` says, checked
(ccloudvm.images.build builds it).

A plain frozen dataclass whose field annotations carry their checks: pydantic validates a
file's mapping against it (`from_mapping`, with every problem at once), code and tests may
construct one directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, StrictStr, ValidationError

from ccloudvm.core.config import Strict, one_of, problem
from ccloudvm.images import recipe_files

if TYPE_CHECKING:
    from pydantic import TypeAdapter

# Part of every build recipe's cache key: bump it when the builder's output changes.
RECIPE_FORMAT = 1

_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")
_SUITE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_MODULE = re.compile(r"^[A-Za-z0-9_-]+$")
_UNIT = re.compile(r"^[A-Za-z0-9@_.:-]+$")
_MIRROR = re.compile(r"^(https?|file)://\S+$")


def _names(pattern: re.Pattern[str], required: bool = False) -> Any:
    def check(value: list[Any]) -> tuple[str, ...]:
        if required and not value:
            raise problem("must be a non-empty list")
        bad = [item for item in value if not isinstance(item, str) or not pattern.match(item)]
        if bad:
            raise problem(f"has invalid entries: {', '.join(map(str, bad))}")
        return tuple(value)

    return one_of([list], "a non-empty list" if required else "a list", check, list[str])


def _matching(pattern: re.Pattern[str], message: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise problem(message)
        return value

    return AfterValidator(check)


def _size(value: int) -> int:
    if not 1 <= value <= 1024:
        raise problem("must be a whole number from 1 to 1024")
    return value


def _guest_path(path: str) -> PurePosixPath:
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2:
        raise ValueError(f"'files' path {path!r} must be absolute, below /, without '..'")
    return pure


def _file_path(path: str) -> str:
    try:
        _guest_path(path)
    except ValueError as exc:
        raise problem(str(exc)) from None
    return path


class ModuleFile(Strict):
    """A file whose text is the source of a ccloudvm module (ccloudvm.images.recipe_files)."""

    module: str = Field(description="ccloudvm.NAME: its source is written as it is")


def _file_text(value: str | dict[str, Any]) -> str:
    """The text a `files` entry writes: as given, or the source of the module it names."""
    if isinstance(value, str):
        return value
    try:
        return recipe_files.module_source(ModuleFile.model_validate(value).module)
    except ValidationError:
        raise problem("must be text or {module: ccloudvm.NAME}") from None
    except ValueError as exc:
        raise problem(str(exc).removeprefix("'files': ")) from None


Names = Annotated[tuple[str, ...], _names(_UNIT)]
FileText = Annotated[
    str, one_of([str, dict], "text or {module: ccloudvm.NAME}", _file_text, str | ModuleFile)
]


@dataclass(frozen=True)
class BuildRecipe:
    __pydantic_config__ = ConfigDict(extra="forbid")  # every field below takes strict types

    suite: Annotated[StrictStr, _matching(_SUITE, "must be a Debian suite name like bookworm")]
    packages: Annotated[tuple[str, ...], _names(_PACKAGE, required=True)]
    mirror: (
        Annotated[StrictStr, _matching(_MIRROR, "must be an http(s):// or file:// URL")] | None
    ) = None
    initrd_modules: Annotated[tuple[str, ...], _names(_MODULE)] = ()
    size_gib: Annotated[int, one_of([int], "a whole number from 1 to 1024", _size)] = 4
    # absolute path -> content
    files: Mapping[Annotated[StrictStr, AfterValidator(_file_path)], FileText] = field(
        default_factory=dict
    )
    services: Names = ()  # systemd units to enable
    masked: Names = ()  # systemd units that must never run

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BuildRecipe:
        """Parse and check a recipe; ValueError names every offending key."""
        from ccloudvm.core.config import explain

        try:
            return _adapter().validate_python(data)
        except ValidationError as exc:
            problems = explain(exc, cls, noun="key")
        raise ValueError("; ".join(p.text("") for p in problems))

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


@cache
def _adapter() -> TypeAdapter[BuildRecipe]:
    from pydantic import TypeAdapter

    return TypeAdapter(BuildRecipe)
