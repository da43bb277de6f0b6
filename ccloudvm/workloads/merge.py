"""Merging a chain of workload files: cloud-config, ports, mounts, drives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from ccloudvm.core.specs import MountSpec, PortSpec
from ccloudvm.workloads.spec import VMSpec

T = TypeVar("T")


def merge_config(parent: Any, child: Any) -> Any:
    """Cloud-config merge: maps recursively, lists concatenate parent first, else child."""
    if isinstance(parent, dict) and isinstance(child, dict):
        merged = dict(parent)
        for key, value in child.items():
            merged[key] = merge_config(parent[key], value) if key in parent else value
        return merged
    if isinstance(parent, list) and isinstance(child, list):
        return [*parent, *child]
    return child


def merge_replacing(
    parent: Sequence[T],
    child: Sequence[T],
    clash: Callable[[T, T], bool],
    combine: Callable[[T, T], T] = lambda _old, new: new,
) -> tuple[T, ...]:
    """The parent's entries, each replaced in place by a child's entry that clashes with
    it (`combine(old, new)`: the new one); the child's other entries follow. Nothing that
    clashes survives twice."""
    merged = list(parent)
    for item in child:
        hits = [index for index, old in enumerate(merged) if clash(old, item)]
        if not hits:
            merged.append(item)
            continue
        merged[hits[0]] = combine(merged[hits[0]], item)
        for index in reversed(hits[1:]):
            del merged[index]
    return tuple(merged)


def ports_clash(a: PortSpec, b: PortSpec) -> bool:
    """The same host port and address (only one forward can own it) or the same guest
    port (moved)."""
    return (a.host, a.bind_address) == (b.host, b.bind_address) or a.guest == b.guest


def mounts_clash(a: MountSpec, b: MountSpec) -> bool:
    """The same tag (when both have one) or the same guest folder."""
    return bool(a.tag and a.tag == b.tag) or a.guest_path == b.guest_path


def _keep_tag(old: MountSpec, new: MountSpec) -> MountSpec:
    """An untagged mount that replaces a tagged one keeps the tag (scripts may name it)."""
    return new if new.tag else replace(new, tag=old.tag)


def merge_vm(parent: VMSpec, child: VMSpec) -> VMSpec:
    return VMSpec(
        mem_mib=child.mem_mib if child.mem_mib is not None else parent.mem_mib,
        cpus=child.cpus if child.cpus is not None else parent.cpus,
        disk_gib=child.disk_gib if child.disk_gib is not None else parent.disk_gib,
        ports=merge_replacing(parent.ports, child.ports, ports_clash),
        mounts=merge_replacing(parent.mounts, child.mounts, mounts_clash, _keep_tag),
        drives=merge_replacing(parent.drives, child.drives, lambda a, b: a.path == b.path),
    )


def _tag_mounts(mounts: Sequence[MountSpec]) -> tuple[MountSpec, ...]:
    """Give each untagged mount (tag "") the first free tag mount0, mount1, ... once the
    whole chain is merged, so untagged mounts of different files never collide."""
    used = {m.tag for m in mounts if m.tag}
    tagged = []
    number = 0
    for mount in mounts:
        if not mount.tag:
            while f"mount{number}" in used:
                number += 1
            used.add(f"mount{number}")
            mount = replace(mount, tag=f"mount{number}")
        tagged.append(mount)
    return tuple(tagged)
