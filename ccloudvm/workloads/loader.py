"""Loading a workload: find, validate, inherit, render and merge (docs/workloads.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ccloudvm.core.errors import NotFoundError, UsageError
from ccloudvm.guest.proxy import ProxySettings
from ccloudvm.state.paths import StateDir, resource_dir
from ccloudvm.workloads.level import _Level, _parse_cloud_config, read_ca_cert
from ccloudvm.workloads.merge import _tag_mounts, merge_config, merge_vm
from ccloudvm.workloads.parse import ParsedFile, parse_file
from ccloudvm.workloads.sources import WorkloadSource, _find_parent, find_workload
from ccloudvm.workloads.spec import Check, ProvisionStep, VMSpec, Workload
from ccloudvm.workloads.templating import Downloads, TemplateContext, make_environment, render
from ccloudvm.workloads.templating import variables as template_variables


def read_workload(state: StateDir, ref: str) -> list[ParsedFile]:
    """Every file of the inheritance graph in merge order (read, a URL fetched, once:
    load_workload renders them for any instance name); a cycle is an error naming it.

    Depth first, parents before their child, a file's parents in the order it lists them,
    each file once (where two parents share an ancestor, it comes before both). So later
    parents win over earlier ones, the child over all, and steps run in parent order.
    """
    order: list[ParsedFile] = []
    merged: set[str] = set()

    def visit(src: WorkloadSource, stack: list[WorkloadSource]) -> None:
        origins = [s.origin for s in stack]
        if src.origin in origins:
            cycle = " -> ".join([*(s.name for s in stack[origins.index(src.origin) :]), src.name])
            raise UsageError(f"inheritance cycle: {cycle}", hint="remove one of the inherits")
        if src.origin in merged:
            return
        doc = parse_file(src)
        for where, parent in doc.parents():
            try:
                parent_src = _find_parent(state, src, parent)
            except NotFoundError as exc:
                raise UsageError(
                    f"{doc.where(where)}: parent workload {parent!r} not found: {exc.message}",
                    hint=exc.hint,
                ) from exc
            visit(parent_src, [*stack, src])
        merged.add(src.origin)
        order.append(doc)

    visit(find_workload(state, ref), [])
    return order


def _fragments(
    ctx: TemplateContext, propagate_proxy: bool, ca_certs: Sequence[str]
) -> dict[str, Any]:
    """The proxy and CA cloud-config fragments from cloud-init/, merged."""
    env = make_environment(False, [resource_dir("cloud-init")])
    merged: dict[str, Any] = {}
    parts = []
    if ca_certs:
        parts.append(("ca-certs.yaml.j2", {"ca_certs": list(ca_certs)}))
    if propagate_proxy and not ctx.proxies.is_empty():
        parts.append(("proxy.yaml.j2", {}))
    for template, extra in parts:
        names = template_variables(ctx, {}, Downloads(None, f"cloud-init/{template}"))
        text = render(
            env, template_name=template, label=f"cloud-init/{template}", names={**names, **extra}
        )
        merged = merge_config(merged, _parse_cloud_config(text, f"cloud-init/{template}"))
    return merged


def load_workload(
    state: StateDir,
    ref: str | Sequence[ParsedFile],
    ctx: TemplateContext,
    *,
    propagate_proxy: bool = True,
    ca_certs: Sequence[Path] = (),
) -> Workload:
    """Find, validate, render and merge workload `ref` (or the files read_workload read);
    any bad input is a UsageError."""
    if not propagate_proxy:
        ctx = replace(ctx, proxies=ProxySettings())
    docs = read_workload(state, ref) if isinstance(ref, str) else list(ref)
    wvars: dict[str, Any] = {}
    for doc in docs:
        wvars = merge_config(wvars, doc.model.vars or {})
    cache_dir = state.cache / "downloads"
    vm = VMSpec()
    user_data: dict[str, Any] = {}
    steps: list[ProvisionStep] = []
    checks: list[Check] = []
    cluster: dict[str, str] = {}
    network: dict[str, Any] = {}
    certs: list[str] = [read_ca_cert(p) for p in ca_certs]
    image = ""
    description = ""
    nested = False
    remote = [d.src.origin for d in docs if d.src.remote]
    untrusted_from = remote[-1] if remote else None
    for doc in docs:
        level = _Level(doc, ctx, wvars, cache_dir, untrusted_from)
        fields = doc.model
        image = fields.image or image
        description = fields.description or description
        if fields.needs_nested_vm is not None:
            nested = fields.needs_nested_vm
        vm = merge_vm(vm, level.vm())
        user_data = merge_config(user_data, level.user_data())
        steps.extend(level.steps())
        checks.extend(level.checks())
        cluster.update(level.cluster())
        network = merge_config(network, level.network())
        certs.extend(level.ca_certs())
    top = docs[-1]
    if not image:
        raise UsageError(
            f"{top.src.origin}: workload {top.src.name!r} names no image",
            hint="set image: (for example debian-12) or inherit from a workload that does",
        )
    unique_certs = tuple(dict.fromkeys(certs))
    user_data = merge_config(_fragments(ctx, propagate_proxy, unique_certs), user_data)
    return Workload(
        name=top.src.name,
        description=description,
        origin=top.src.origin,
        image=image,
        vm=replace(vm, mounts=_tag_mounts(vm.mounts)),
        needs_nested_vm=nested,
        user_data=user_data,
        provision=tuple(steps),
        checks=tuple(checks),
        cluster=cluster,
        ca_certs=unique_certs,
        chain=tuple(d.src.name for d in docs),
        cluster_network=network,
        vars=wvars,
    )
