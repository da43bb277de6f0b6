"""The image definition file, declared once: what each field takes.

ccloudvm.images.definitions reads files with it; its JSON Schema is committed as
docs/image.schema.json (a test keeps it current and checks images/*.yaml against it).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator

from ccloudvm.core.config import Strict, problem
from ccloudvm.images.recipe import BuildRecipe

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
ROLES = ("disk", "kernel", "initrd")


def _http(value: str) -> str:
    if urlsplit(value).scheme not in ("http", "https"):
        raise problem(f"{value!r} is not an http(s) URL")
    return value


def _hex64(value: str) -> str:
    if not _HEX64.match(value):
        raise problem("must be 64 hex digits (a sha256)")
    return value


Url = Annotated[StrictStr, AfterValidator(_http)]
Digest = Annotated[StrictStr, AfterValidator(_hex64)]


class Source(Strict):
    """A disk (and optionally a kernel and initrd) to download, checksum-verified."""

    disk: Url = Field(description="URL of the disk image (qcow2 or raw)")
    kernel: Url | None = Field(default=None, description="URL of a kernel, for direct boot")
    initrd: Url | None = Field(default=None, description="URL of its initrd")
    sha256sums: Url | None = Field(default=None, description="URL of a SHA256SUMS file")
    sha256: dict[Literal["disk", "kernel", "initrd"], Digest] | None = Field(
        default=None, description="role -> sha256; wins over sha256sums"
    )

    @property
    def urls(self) -> dict[str, str]:
        """role (disk, kernel, initrd) -> URL, for the roles given."""
        return {role: url for role in ROLES if (url := getattr(self, role)) is not None}

    @model_validator(mode="after")
    def _complete(self) -> Source:
        if (self.kernel is None) != (self.initrd is None):
            raise problem("'kernel' and 'initrd' go together")
        digests = self.sha256 or {}
        extra = sorted(set(digests) - set(self.urls))
        if extra:
            raise problem(
                f"has a checksum for {extra[0]}, which it does not download", at=("sha256",)
            )
        if self.sha256sums is None and set(digests) != set(self.urls):
            raise problem("every file needs a checksum: add 'sha256sums' or 'sha256'")
        return self


class Boot(Strict):
    cmdline: str | None = Field(
        default=None, description="Kernel command line (needs source.kernel)"
    )
    warm: bool = Field(default=False, description="Its cloud-init waits for a seed (warm boot)")


class ImageFile(BaseModel):
    """One image definition: `source` (download) or `build` (a local recipe)."""

    # Not Strict as a whole (the recipe is a dataclass): each field takes strict types.
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: StrictStr | None = None
    source: Source | None = None
    build: BuildRecipe | None = Field(default=None, description="Built locally with mmdebstrap")
    boot: Boot | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ImageFile:
        if (self.source is None) == (self.build is None):
            raise problem("needs exactly one of 'source' (download) or 'build' (local recipe)")
        boot = self.boot or Boot()
        if self.source is not None and boot.cmdline and self.source.kernel is None:
            raise problem("needs 'source.kernel' (direct kernel boot)", at=("boot", "cmdline"))
        return self


def json_schema() -> str:
    """The JSON Schema of an image definition, as committed in docs/image.schema.json."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **ImageFile.model_json_schema(by_alias=True),
    }
    return json.dumps(schema, indent=2) + "\n"
