"""What loading a workload gives: the merged, rendered workload and its parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccloudvm.core.specs import DriveSpec as DriveSpec  # declared with ports and mounts
from ccloudvm.core.specs import MountSpec, PortSpec
from ccloudvm.workloads.templating import Download


@dataclass(frozen=True)
class VMSpec:
    mem_mib: int | None = None
    cpus: int | None = None
    disk_gib: int | None = None
    ports: tuple[PortSpec, ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    drives: tuple[DriveSpec, ...] = ()


@dataclass(frozen=True)
class ProvisionStep:
    """One named step: a rendered shell script, or a file to copy. Runs via provision.py."""

    name: str
    script: str | None = None
    copy_src: Path | None = None
    copy_dest: str | None = None
    sudo: bool = False
    uploads: tuple[Download, ...] = ()
    copy_mode: int = 0o644
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Check:
    name: str
    run: str
    sudo: bool = False


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    origin: str
    image: str
    vm: VMSpec
    needs_nested_vm: bool
    user_data: dict[str, Any]
    provision: tuple[ProvisionStep, ...]
    checks: tuple[Check, ...]
    cluster: dict[str, str]
    ca_certs: tuple[str, ...]
    chain: tuple[str, ...] = ()  # names from the root parent to this workload
    cluster_network: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
