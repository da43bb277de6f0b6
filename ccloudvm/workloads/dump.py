"""A loaded workload as plain data and YAML: what `ccloudvm workload show` prints."""

from __future__ import annotations

from typing import Any

import yaml

from ccloudvm.workloads.spec import Workload


class _BlockDumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def workload_as_dict(w: Workload) -> dict[str, Any]:
    """The merged, rendered workload as plain data (what `workload show` prints)."""
    vm: dict[str, Any] = {
        "mem": w.vm.mem_mib,
        "cpus": w.vm.cpus,
        "disk": w.vm.disk_gib,
        "ports": [str(p) for p in w.vm.ports],
        "mounts": [
            {
                "host": str(m.host_path),
                "guest": m.guest_path,
                "tag": m.tag,
                **({"security_model": m.security_model} if m.security_model else {}),
                **({"readonly": True} if m.readonly else {}),
            }
            for m in w.vm.mounts
        ],
        "drives": [
            {
                "path": str(d.path),
                "format": d.format,
                **({"options": d.options} if d.options else {}),
            }
            for d in w.vm.drives
        ],
    }
    steps = []
    for step in w.provision:
        item: dict[str, Any] = {"name": step.name}
        if step.sudo:
            item["sudo"] = True
        if step.env:
            item["env"] = dict(step.env)
        if step.script is not None:
            item["run"] = step.script
        else:
            item["copy"] = {
                "src": str(step.copy_src),
                "dest": step.copy_dest,
                "mode": f"{step.copy_mode:04o}",
            }
        if step.uploads:
            item["downloads"] = [{"url": d.url, "dest": d.dest} for d in step.uploads]
        steps.append(item)
    result: dict[str, Any] = {
        "name": w.name,
        "description": w.description,
        "origin": w.origin,
        "inherits": " -> ".join(w.chain),
        "image": w.image,
        "needs_nested_vm": w.needs_nested_vm,
        "vm": {k: v for k, v in vm.items() if v not in (None, [])},
        "user_data": w.user_data,
        "provision": steps,
        "checks": [
            {"name": c.name, "run": c.run, **({"sudo": True} if c.sudo else {})} for c in w.checks
        ],
    }
    if w.vars:
        result["vars"] = w.vars
    if w.cluster or w.cluster_network:
        result["cluster"] = {"network": w.cluster_network, **w.cluster}
    return result


def render_workload_yaml(w: Workload) -> str:
    """YAML for `ccloudvm workload show NAME`: everything that will run, fully rendered."""
    return yaml.dump(
        workload_as_dict(w),
        Dumper=_BlockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
