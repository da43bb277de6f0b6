"""Workloads: find, validate, inherit, render and merge workload definitions.

A workload file is plain YAML whose string values are Jinja2 templates (docs/workloads.md).
Loading one is: find it (path, URL, the user's workloads folder, bundled templates/),
read its `inherits` (one parent or a list), validate every file with line numbers,
linearize the parents (each file once, parents before children, earlier parents before
later ones), render each file's templates in its own environment (sandboxed when it came
from a URL), and merge them in that order into one frozen Workload.

The work is split by job: sources (finding files), parse (one file, validated), level
(one file, rendered), merge, loader (the whole chain), dump (`workload show`); spec holds
the results. This module is their public face.
"""

from ccloudvm.workloads.dump import render_workload_yaml, workload_as_dict
from ccloudvm.workloads.level import read_ca_cert
from ccloudvm.workloads.loader import load_workload, read_workload
from ccloudvm.workloads.merge import (
    merge_config,
    merge_replacing,
    merge_vm,
    mounts_clash,
    ports_clash,
)
from ccloudvm.workloads.sources import NAME_RE, WorkloadSource, find_workload, list_workloads
from ccloudvm.workloads.spec import Check, DriveSpec, ProvisionStep, VMSpec, Workload

__all__ = [
    "NAME_RE",
    "Check",
    "DriveSpec",
    "ProvisionStep",
    "VMSpec",
    "Workload",
    "WorkloadSource",
    "find_workload",
    "list_workloads",
    "load_workload",
    "merge_config",
    "merge_replacing",
    "merge_vm",
    "mounts_clash",
    "ports_clash",
    "read_ca_cert",
    "read_workload",
    "render_workload_yaml",
    "workload_as_dict",
]
