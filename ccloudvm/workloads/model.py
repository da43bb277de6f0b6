"""The workload file, declared once: what each field takes, as written (before rendering).

String values are Jinja2 templates, rendered later per file (ccloudvm.workloads.level):
the model checks what a file says, the JSON Schema (`ccloudvm workload schema`,
docs/workload.schema.json) is derived from it for editors and check-jsonschema.
"""

from __future__ import annotations

import ipaddress
import json
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from ccloudvm.core.config import Strict, one_of, problem
from ccloudvm.core.sizes import SizeError, accepted_forms, parse_size
from ccloudvm.core.specs import SECURITY_MODELS

CLUSTER_SCRIPTS = ("setup", "verify", "bat", "cleanup", "env")
DRIVE_FORMAT_RE = re.compile(r"[a-z0-9]+")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LINK_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
LEASE_RE = re.compile(r"\d+[smhd]?|infinite")

SecurityModel = Literal["passthrough", "mapped-xattr", "mapped-file", "none"]
assert typing.get_args(SecurityModel) == SECURITY_MODELS


def _size(unit: str) -> Any:
    def check(value: int | str) -> int:
        try:
            number = parse_size(value, unit)
        except SizeError:
            raise problem(
                f"must be a number or a size like 4G, not {value!r}", accepted_forms(unit)
            ) from None
        if number <= 0:
            raise problem("must be positive")
        return number

    return one_of([int, str], "a number or a size like 4G", check)


def _parents(value: str | list[Any]) -> str | list[str]:
    for index, ref in enumerate([] if isinstance(value, str) else value):
        if not isinstance(ref, str) or not ref:
            raise problem(f"must be a workload name, path or URL, not {ref!r}", at=(index,))
    return value


def _drive_format(value: str) -> str:
    if not DRIVE_FORMAT_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a disk format", "use a QEMU format name such as qcow2 or raw"
        )
    return value


def _env_name(value: str) -> str:
    if not ENV_NAME_RE.fullmatch(value):
        raise problem(f"bad variable name {value!r}", "use letters, digits and _")
    return value


def _mode(value: str | int) -> int:
    if not re.fullmatch(r"0?[0-7]{3}", str(value)):
        raise problem("must be octal, like '0644'")
    return int(str(value), 8)


def _link(value: str) -> str:
    if not LINK_RE.fullmatch(value):
        raise problem(
            f"{value!r} is not a valid link name", "use up to 15 letters, digits, '.', '_' or '-'"
        )
    return value


def _address(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise problem(f"bad cluster network address: {exc}") from None


def _external(value: str) -> str:
    if value and not LINK_RE.fullmatch(value):
        raise problem(f"{value!r} is not a link name", "use the name 'ip link' shows")
    return value


def _prefix(value: int) -> int:
    if not 8 <= value <= 30:
        raise problem(f"/{value} must be between /8 and /30")
    return value


def _lease(value: str) -> str:
    if not LEASE_RE.fullmatch(value):
        raise problem(f"{value!r} is not like 12h, 30m, 3600 or infinite")
    return value


Mem = Annotated[int, _size("M")]
Disk = Annotated[int, _size("G")]
Parents = Annotated[
    str | list[str], one_of([str, list], "a string or a list", _parents, str | list[str])
]
UserData = Annotated[
    str | dict[str, Any], one_of([str, dict], "a string or a mapping", None, str | dict[str, Any])
]
Port = Annotated[int | str, one_of([int, str], "a port like '8080:80'")]
EnvValue = Annotated[
    str | int | float | bool, one_of([str, int, float, bool], "a string or a number")
]
EnvName = Annotated[str, AfterValidator(_env_name)]
CopyMode = Annotated[int, one_of([str, int], "octal like '0644'", _mode)]
PemOrPath = Annotated[str, one_of([str], "a PEM text or a path")]
LinkName = Annotated[str, AfterValidator(_link)]
Address = Annotated[str, AfterValidator(_address)]


class Mount(Strict):
    host: str = Field(description="Host folder (made if missing); a template")
    guest: str = Field(description="Absolute folder in the guest; a template")
    tag: str | None = Field(default=None, description="9p tag (default mount0, mount1, ...)")
    security_model: SecurityModel | None = None
    readonly: bool | None = None


class Drive(Strict):
    path: str = Field(description="Disk image file on the host; a template")
    format: Annotated[str, AfterValidator(_drive_format)] | None = Field(
        default=None, description="QEMU format name (default qcow2)"
    )
    options: str | None = Field(default=None, description="Extra -drive options, like cache=none")


class VM(Strict):
    mem: Mem | None = Field(default=None, description="MiB, or a size: 4G, 512M, 1.5G")
    cpus: int | None = None
    disk: Disk | None = Field(default=None, description="GiB, or a size: 40G, 1T")
    ports: list[Port] | None = Field(default=None, description="HOST:GUEST, or one port for both")
    mounts: list[Mount] | None = None
    drives: list[Drive] | None = None


class Copy(Strict):
    src: str = Field(description="File next to the workload, else in templates/")
    dest: str = Field(description="Path in the guest; a template")
    mode: CopyMode | None = Field(default=None, description="Octal, default '0644'")


class Step(Strict):
    name: str
    run: str | None = Field(default=None, description="An inline shell script (a template)")
    script: str | None = Field(
        default=None, description="A template file: next to this workload, else templates/"
    )
    copy_: Copy | None = Field(default=None, alias="copy", description="A file, copied as is")
    sudo: bool | None = None
    env: dict[EnvName, EnvValue] | None = Field(
        default=None, description="Exported for this step; values are templates"
    )
    only: Literal["vm", "host"] | None = Field(
        default=None, description="vm: not in bare-metal mode; host: only there"
    )

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        if sum(x is not None for x in (self.run, self.script, self.copy_)) != 1:
            raise problem("a step needs exactly one of run, script, copy")
        return self


class Check(Strict):
    name: str
    run: str | None = None
    script: str | None = None
    sudo: bool | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Check:
        if (self.run is None) == (self.script is None):
            raise problem("a check needs exactly one of run, script")
        return self


class Network(Strict):
    """The shared cluster network's parameters; a workload may set any of them."""

    bridge: LinkName = "ciao_br"
    macvlan: LinkName = "ciaovlan"
    gateway: Address = "198.51.100.1"
    prefix: Annotated[int, AfterValidator(_prefix)] = 24
    dhcp_start: Address = "198.51.100.50"
    dhcp_end: Address = "198.51.100.100"
    lease_time: Annotated[str, AfterValidator(_lease)] = "12h"
    dns: bool = True
    external_interface: Annotated[str, AfterValidator(_external)] = ""


class Cluster(Strict):
    network: Network | None = None
    setup: str | None = Field(default=None, description="A script, or a template file (.j2, .sh)")
    verify: str | None = None
    bat: str | None = None
    cleanup: str | None = None
    env: str | None = None


class WorkloadFile(Strict):
    """One workload file as written; see docs/workloads.md."""

    description: str | None = Field(default=None, description="One line for 'ccloudvm workloads'")
    inherits: Parents | None = Field(
        default=None, description="A workload name, path or URL, or a list"
    )
    image: str | None = Field(default=None, description="An image definition, like debian-12")
    needs_nested_vm: bool | None = None
    vm: VM | None = None
    vars: dict[str, Any] | None = Field(
        default=None, description="Data for templates, merged along the chain"
    )
    user_data: UserData | None = Field(
        default=None, description="cloud-config: a template, or a mapping"
    )
    ca_certs: list[PemOrPath] | None = Field(default=None, description="PEM text, or a file")
    provision: list[Step] | None = None
    checks: list[Check] | None = None
    cluster: Cluster | None = None


def json_schema() -> str:
    """The JSON Schema of a workload file, as committed in docs/workload.schema.json."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **WorkloadFile.model_json_schema(by_alias=True),
    }
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"
