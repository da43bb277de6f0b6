"""The way of `ccloudvm create WORKLOAD`: resolve the workload, check it, boot an instance
of it, provision it; and `ccloudvm baremetal provision`, the same steps on this host.
Each step is another module's job; this one only puts them in order."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from ccloudvm.app import buildindex, provision
from ccloudvm.core import defaults, ui
from ccloudvm.core.errors import CcloudvmError, CreateInterrupted, NotFoundError, UsageError
from ccloudvm.core.hostinfo import host_user
from ccloudvm.core.specs import DriveSpec, MountSpec, PortSpec
from ccloudvm.guest import proxy
from ccloudvm.images import catalog as images
from ccloudvm.instance import access, warm
from ccloudvm.instance import create as instance_create
from ccloudvm.instance.checks import CreateRequest
from ccloudvm.remote.local import LocalTarget
from ccloudvm.remote.target import OutputSink, Target
from ccloudvm.state.instance_state import (
    InstanceState,
    files_of,
    load_state,
    save_state,
)
from ccloudvm.state.paths import StateDir
from ccloudvm.workloads.definition import (
    Workload,
    load_workload,
    merge_replacing,
    ports_clash,
    read_workload,
)
from ccloudvm.workloads.templating import TemplateContext

PROVISION_LOG = "provision.log"


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
    timeout: float = defaults.BOOT_TIMEOUT
    verbose: bool = False  # print provision steps' output as it comes
    driver: str = "qemu"  # ccloudvm.vm.drivers: qemu or libvirt
    connect: str = ""  # the libvirt URI


class Loaded:
    """Workload `ref` as read once (a URL fetched once), rendered for each name that needs
    it: the instance's, and the fixed one a saved build is keyed by."""

    def __init__(self, state: StateDir, ref: str) -> None:
        self.state = state
        self.ref = ref
        self.files = read_workload(state, ref)

    def render(self, name: str, *, propagate_proxy: bool = True,
               ca_certs: list[Path] | None = None, mounts: list[MountSpec] | None = None,
               bare_metal: bool = False) -> Workload:  # fmt: skip
        """The workload rendered for an instance called `name` (or for this host)."""
        host_proxies = proxy.read_host_proxies(os.environ)
        proxies = host_proxies if bare_metal else proxy.for_guest(host_proxies, hostname=name)
        ctx = TemplateContext(
            host=host_user(), instance_name=name, proxies=proxies, mounts=list(mounts or []),
            bare_metal=bare_metal,
        )  # fmt: skip
        return load_workload(self.state, self.files, ctx, propagate_proxy=propagate_proxy,
                             ca_certs=ca_certs or [])  # fmt: skip


def resolve(state: StateDir, ref: str, name: str, *, propagate_proxy: bool = True,
            ca_certs: list[Path] | None = None, mounts: list[MountSpec] | None = None,
            bare_metal: bool = False) -> Workload:  # fmt: skip
    """Load and render workload `ref` for an instance called `name` (or for this host)."""
    return Loaded(state, ref).render(name, propagate_proxy=propagate_proxy, ca_certs=ca_certs,
                                     mounts=mounts, bare_metal=bare_metal)  # fmt: skip


def _merge_mounts(workload: Workload, cli: list[MountSpec]) -> list[MountSpec]:
    """The workload's mounts, a --mount for the same guest folder replacing one; CLI
    mounts get tags clear of the workload's (they are numbered mountN too)."""
    guest_paths = {m.guest_path for m in cli}
    kept = [m for m in workload.vm.mounts if m.guest_path not in guest_paths]
    used = {m.tag for m in kept}
    merged = list(kept)
    for index, mount in enumerate(cli):
        tag = mount.tag
        while tag in used:
            index += 100
            tag = f"mount{index}"
        used.add(tag)
        merged.append(
            MountSpec(mount.host_path, mount.guest_path, tag, mount.security_model, mount.readonly)
        )
    return merged


def _merge_ports(workload: Workload, cli: list[PortSpec]) -> list[PortSpec]:
    """A --port replaces the workload's forward of the same host or guest port."""
    return list(merge_replacing(workload.vm.ports, cli, ports_clash))


def _make_mount_folders(mounts: list[MountSpec]) -> list[Path]:
    """Create the host folders of mounts that do not exist yet (a workload's GOPATH, say);
    returns what was made, outermost first, so a failure can remove it again."""
    made: list[Path] = []
    for mount in mounts:
        missing = [p for p in (mount.host_path, *mount.host_path.parents) if not p.exists()]
        try:
            for path in reversed(missing):
                path.mkdir()
                made.append(path)
        except OSError as exc:
            _remove_folders(made)
            raise UsageError(
                f"cannot create {mount.host_path} to share it with the guest as "
                f"{mount.guest_path}: {exc.strerror or exc}",
                hint="create the folder yourself, or share another one (the workload's vm.mounts)",
            ) from exc
        if missing:
            ui.info(f"created {mount.host_path} to share it with the guest as {mount.guest_path}")
    return made


def _remove_folders(made: list[Path]) -> None:
    for path in reversed(made):
        with suppress(OSError):  # something was put in it meanwhile: leave it
            path.rmdir()


def _first(flag: int | None, workload_value: int | None) -> int | None:
    """A flag wins over the workload, even when it is 0 (which validation then refuses)."""
    return flag if flag is not None else workload_value


@dataclass(frozen=True)
class _Plan:
    """What create will make: the request, from the workload as rendered for its name."""

    loaded: Loaded
    request: CreateRequest
    workload: Workload


def _plan(state: StateDir, ref: str | Loaded, options: CreateOptions) -> _Plan:
    name = instance_create.claim_name(state, options.name)  # the one check of the name
    loaded = ref if isinstance(ref, Loaded) else Loaded(state, ref)
    workload = loaded.render(name, propagate_proxy=options.propagate_proxy,
                             ca_certs=options.ca_certs, mounts=options.mounts)  # fmt: skip
    request = CreateRequest(
        workload=workload.name,
        image=options.image or workload.image,
        name=name,
        mem_mib=_first(options.mem_mib, workload.vm.mem_mib),
        cpus=_first(options.cpus, workload.vm.cpus),
        disk_gib=_first(options.disk_gib, workload.vm.disk_gib),
        ports=_merge_ports(workload, options.ports),
        mounts=_merge_mounts(workload, options.mounts),
        drives=[*workload.vm.drives, *(DriveSpec.parse(d) for d in options.drives)],
        accel_mode=options.accel_mode,
        driver=options.driver,
        connect=options.connect,
        nested=workload.needs_nested_vm,
        user_data=workload.user_data,
        timeout=options.timeout,
        workload_ref=loaded.ref,
        propagate_proxy=options.propagate_proxy,
        proxy=proxy.describe(
            proxy.for_guest(proxy.read_host_proxies(os.environ), hostname=name),
            propagated=options.propagate_proxy,
        ),
    )
    return _Plan(loaded, request, workload)


def build_request(
    state: StateDir, ref: str | Loaded, options: CreateOptions
) -> tuple[CreateRequest, Workload]:
    """The instance create would ask for, and the workload rendered for it."""
    plan = _plan(state, ref, options)
    return plan.request, plan.workload


def _preflight(state: StateDir, request: CreateRequest, workload: Workload) -> None:
    """The checks that can be made before anything is made on the host (the instance's
    own are instance_create's, and a failure there removes the mount folders made for it)."""
    try:
        images.load_definition(state, request.image)
    except NotFoundError:
        if not any(i.name == request.image for i in images.cached_images(state)):
            raise
    for drive in workload.vm.drives:
        if not drive.path.is_file():
            raise UsageError(
                f"drive {drive.path} of workload {workload.name!r} does not exist",
                hint="create the disk image first or fix vm.drives in the workload",
            )


def create(state: StateDir, ref: str | Loaded, options: CreateOptions) -> InstanceState:
    """`ccloudvm create`: the workload read and rendered, the name checked, the instance
    made and booted, then provisioned over the SSH session its readiness was seen on."""
    plan = _plan(state, ref, options)
    try:
        inst = _create(state, plan, options)
        warm.snapshot_later(state, inst)  # after provisioning: it slows nothing of it
        return inst
    except KeyboardInterrupt as exc:
        if isinstance(exc, CreateInterrupted):
            raise
        name = plan.request.name or ""
        removed = not os.path.lexists(state.instance_dir(name))
        code = getattr(exc, "exit_code", 130)
        raise CreateInterrupted(name, removed, code) from exc


def _create(state: StateDir, plan: _Plan, options: CreateOptions) -> InstanceState:
    request, workload = plan.request, plan.workload
    reused = _saved_build(state, plan) if options.use_cache and not options.image else None
    if reused is not None:
        ui.info(f"using the saved build {reused} of {workload.name}: nothing to provision")
        request = replace(request, image=reused)
    _preflight(state, request, workload)
    with ExitStack() as session:  # the SSH connection, open until provisioning ends
        with ExitStack() as undo:  # what is unwound if the instance does not get ready
            # Only the workload's folders are made (a --mount of a missing folder is an error).
            made = _make_mount_folders([m for m in request.mounts if m in workload.vm.mounts])
            undo.callback(_remove_folders, made)
            booted = session.enter_context(instance_create.ready(state, request))
            undo.pop_all()  # ready: the folders stay
        if workload.provision and reused is None:
            provision_instance(state, booted.inst.name, workload, verbose=options.verbose,
                               target=booted.target)  # fmt: skip
    return booted.inst


def _saved_build(state: StateDir, plan: _Plan) -> str | None:
    """The saved image of an earlier `ccloudvm build` of this very workload, if any."""
    if not plan.workload.provision:
        return None
    keyed = plan.loaded.render(buildindex.BUILD_INSTANCE_NAME)
    image = buildindex.find_build(state, buildindex.build_key(state, keyed))
    return image.name if image is not None else None


def workload_of(state: StateDir, name: str) -> Workload:
    """The workload an existing instance was made from, rendered for it again."""
    inst = load_state(state, name)
    return resolve(state, inst.workload_ref or inst.workload, name,
                   propagate_proxy=inst.propagate_proxy, mounts=inst.mount_specs())  # fmt: skip


def verify(state: StateDir, name: str) -> tuple[int, int]:
    """Run the workload's checks (its release criterion) in the instance."""
    workload = workload_of(state, name)
    if not workload.checks:
        raise UsageError(
            f"workload {workload.name!r} has no checks", hint="add a 'checks:' list to it"
        )
    with access.connect_target(state, name) as target:
        return provision.run_checks(target, workload.checks)


def provision_log(state: StateDir, name: str) -> Path:
    """Every provision run's output for instance `name` (appended; `ccloudvm logs NAME
    --provision` shows it)."""
    return files_of(state, name).dir / PROVISION_LOG


@contextmanager
def _appending_log(path: Path, title: str) -> Iterator[OutputSink]:
    """A sink that appends lines to `path`, after a header naming this run."""
    try:
        handle = path.open("a", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CcloudvmError(f"cannot write the provision log {path}: {exc.strerror}") from exc
    with handle:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
        handle.write(f"\n===== {title}, {stamp}\n")
        handle.flush()

        def write(line: str) -> None:
            handle.write(line + "\n")
            handle.flush()  # a crash or ^C keeps everything up to here

        yield write


def provision_instance(
    state: StateDir, name: str, workload: Workload, *, verbose: bool = False,
    target: Target | None = None,
) -> None:  # fmt: skip
    """Run the workload's provision steps in a running instance, in order, over `target`
    (an open connection to it; else one is opened); their output is appended to the
    instance's provision.log (and printed as it comes with verbose)."""
    files = files_of(state, name)
    load_state(state, name)  # a clear error for a name that is not an instance
    hint = (
        f"the instance stays for inspection: 'ccloudvm logs {name} --provision' shows the "
        f"whole output, 'ccloudvm connect {name}' opens a shell; "
        f"re-run the steps with 'ccloudvm provision {name}'"
    )
    title = f"provision {name} (workload {workload.name})"
    with _appending_log(provision_log(state, name), title) as log, ExitStack() as opened:
        target = target or opened.enter_context(access.connect_target(state, name))
        provision.run_steps(target, workload.provision, verbose=verbose, log=log, failure_hint=hint)
    inst = load_state(state, name)
    inst.provisioned = True
    save_state(files, inst)
    ui.info(f"{name} is provisioned")


# ---------------------------------------------------------------- bare metal


def _sudo_works() -> bool:
    """True when `sudo -n` runs without asking for a password."""
    try:
        status = LocalTarget().run(["true"], sudo=True, output=lambda _line: None)
    except CcloudvmError:  # no sudo at all
        return False
    return status == 0


def baremetal_provision(
    state: StateDir,
    ref: str,
    *,
    yes: bool = False,
    verbose: bool = False,
    confirm: Callable[[str], bool] | None = None,
) -> Workload:
    """Run workload `ref`'s provision steps on this host, as this user (sudo steps as
    root through `sudo -n`), through the same code that provisions instances."""
    workload = resolve(state, ref, _hostname(), bare_metal=True)
    steps = workload.provision
    if not steps:
        raise UsageError(f"workload {workload.name!r} has no provision steps to run here")
    needs_root = [s.name for s in steps if s.sudo]
    if needs_root and os.geteuid() != 0 and not _sudo_works():
        raise UsageError(
            f"step {needs_root[0]!r} of workload {workload.name!r} runs as root, and sudo -n "
            "does not work for this user",
            hint="run as root, or set up passwordless sudo",
        )
    summary = f"{len(steps)} provision step(s) of workload {workload.name!r} on this host"
    if not yes:
        names = ", ".join(s.name for s in steps)
        if confirm is None or not sys.stdin.isatty():
            raise UsageError(
                f"this would run {summary} ({names}), changing this host",
                hint="read them with 'ccloudvm workload show', then add --yes",
            )
        if not confirm(f"Run {summary} ({names})? This changes this host."):
            raise UsageError("nothing was run", hint="add --yes to run without asking")
    provision.run_steps(
        LocalTarget(),
        steps,
        verbose=verbose,
        failure_hint=f"fix the step, then run 'ccloudvm baremetal provision {ref}' again",
    )
    ui.info(f"this host is provisioned with {workload.name}")
    return workload


def _hostname() -> str:
    return socket.gethostname().split(".", 1)[0] or "localhost"
