"""The way of `ccloudvm create WORKLOAD`: resolve the workload, boot an instance of it,
provision it. Each step is another module's job; this one only puts them in order."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ccloudvm import instance, proxy, ui
from ccloudvm.errors import CcloudvmError, UsageError
from ccloudvm.hostinfo import host_user
from ccloudvm.instance_state import (
    InstanceState,
    files_of,
    instance_names,
    load_state,
    random_name,
    save_state,
    validate_name,
)
from ccloudvm.paths import StateDir
from ccloudvm.specs import MountSpec, PortSpec
from ccloudvm.templating import TemplateContext
from ccloudvm.workload import Workload, load_workload


@dataclass
class CreateOptions:
    name: str | None = None
    mem_mib: int | None = None
    cpus: int | None = None
    disk_gib: int | None = None
    ports: list[PortSpec] = field(default_factory=list)
    mounts: list[MountSpec] = field(default_factory=list)
    drives: list[str] = field(default_factory=list)
    image: str | None = None
    accel_mode: str = "auto"
    propagate_proxy: bool = True
    ca_certs: list[Path] = field(default_factory=list)
    use_cache: bool = True
    timeout: float = instance.BOOT_TIMEOUT


def resolve(state: StateDir, ref: str, name: str, *, propagate_proxy: bool = True,
            ca_certs: list[Path] | None = None, mounts: list[MountSpec] | None = None,
            bare_metal: bool = False) -> Workload:  # fmt: skip
    """Load and render workload `ref` for an instance called `name` (or for this host)."""
    host_proxies = proxy.read_host_proxies(os.environ)
    proxies = host_proxies if bare_metal else proxy.for_guest(host_proxies, hostname=name)
    ctx = TemplateContext(
        host=host_user(), instance_name=name, proxies=proxies, mounts=list(mounts or []),
        bare_metal=bare_metal,
    )  # fmt: skip
    return load_workload(state, ref, ctx, propagate_proxy=propagate_proxy, ca_certs=ca_certs or [])


def _merge_mounts(workload: Workload, cli: list[MountSpec]) -> list[MountSpec]:
    for mount in workload.vm.mounts:
        if not mount.host_path.exists():
            # A workload's folder (the GOPATH, say) may simply not exist yet on this host.
            mount.host_path.mkdir(parents=True)
            ui.info(f"created {mount.host_path} to share it with the guest as {mount.guest_path}")
    merged = {m.tag: m for m in workload.vm.mounts}
    for index, mount in enumerate(cli):
        tag = mount.tag
        while tag in merged:  # CLI mounts are numbered; keep clear of the workload's tags
            index += 100
            tag = f"mount{index}"
        merged[tag] = MountSpec(
            mount.host_path, mount.guest_path, tag, mount.security_model, mount.readonly
        )
    return list(merged.values())


def _merge_ports(workload: Workload, cli: list[PortSpec]) -> list[PortSpec]:
    merged = {p.guest: p for p in workload.vm.ports}
    for port in cli:
        merged[port.guest] = port
    return list(merged.values())


def _first(flag: int | None, workload_value: int | None) -> int | None:
    """A flag wins over the workload, even when it is 0 (which validation then refuses)."""
    return flag if flag is not None else workload_value


def build_request(
    state: StateDir, ref: str, options: CreateOptions
) -> tuple[instance.CreateRequest, Workload]:
    taken = set(instance_names(state))
    name = validate_name(options.name) if options.name else random_name(taken)
    workload = resolve(state, ref, name, propagate_proxy=options.propagate_proxy,
                       ca_certs=options.ca_certs, mounts=options.mounts)  # fmt: skip
    drives = [
        f"{d.path},format={d.format}" + (f",{d.options}" if d.options else "")
        for d in workload.vm.drives
    ]
    request = instance.CreateRequest(
        workload=workload.name,
        image=options.image or workload.image,
        name=name,
        mem_mib=_first(options.mem_mib, workload.vm.mem_mib),
        cpus=_first(options.cpus, workload.vm.cpus),
        disk_gib=_first(options.disk_gib, workload.vm.disk_gib),
        ports=_merge_ports(workload, options.ports),
        mounts=_merge_mounts(workload, options.mounts),
        drives=drives + options.drives,
        accel_mode=options.accel_mode,
        nested=workload.needs_nested_vm,
        user_data=workload.user_data,
        timeout=options.timeout,
        workload_ref=ref,
        propagate_proxy=options.propagate_proxy,
    )
    return request, workload


def create(state: StateDir, ref: str, options: CreateOptions) -> InstanceState:
    request, workload = build_request(state, ref, options)
    reused = _saved_build(state, ref, workload) if options.use_cache and not options.image else None
    if reused is not None:
        ui.info(f"using the saved build {reused} of {workload.name}: nothing to provision")
        request.image = reused
    inst = instance.create(state, request)
    if workload.provision and reused is None:
        provision_instance(state, inst.name, workload)
    return inst


def _saved_build(state: StateDir, ref: str, workload: Workload) -> str | None:
    """The saved image of an earlier `ccloudvm build` of this very workload, if any."""
    if not workload.provision:
        return None
    from ccloudvm import builds

    keyed = resolve(state, ref, builds.BUILD_INSTANCE_NAME)
    image = builds.find_build(state, builds.build_key(state, keyed))
    return image.name if image is not None else None


def workload_of(state: StateDir, name: str) -> Workload:
    """The workload an existing instance was made from, rendered for it again."""
    inst = load_state(state, name)
    return resolve(state, inst.workload_ref or inst.workload, name,
                   propagate_proxy=inst.propagate_proxy, mounts=inst.mount_specs())  # fmt: skip


def verify(state: StateDir, name: str) -> tuple[int, int]:
    """Run the workload's checks (its release criterion) in the instance."""
    from ccloudvm import provision

    workload = workload_of(state, name)
    if not workload.checks:
        raise UsageError(
            f"workload {workload.name!r} has no checks", hint="add a 'checks:' list to it"
        )
    with instance.connect_target(state, name) as target:
        return provision.run_checks(target, workload.checks)


def provision_instance(state: StateDir, name: str, workload: Workload) -> None:
    """Run the workload's provision steps in a running instance, in order."""
    from ccloudvm import provision

    files = files_of(state, name)
    with instance.connect_target(state, name) as target:
        try:
            provision.run_steps(target, workload.provision)
        except CcloudvmError as exc:
            exc.hint = (
                f"the instance stays for inspection: 'ccloudvm logs {name} --cloud-init', "
                f"'ccloudvm connect {name}'; re-run with 'ccloudvm provision {name}'"
            )
            raise
    inst = load_state(state, name)
    inst.provisioned = True
    save_state(files, inst)
    ui.info(f"{name} is provisioned")
