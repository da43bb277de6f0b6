"""The command line: thin click commands over the library.

Every command catches CcloudvmError at the top (main) and prints one line: what went
wrong and what to do next. --debug shows tracebacks and every host command run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from ccloudvm import __version__
from ccloudvm.cli import cluster as cli_cluster
from ccloudvm.cli import completion
from ccloudvm.cli import images as cli_images
from ccloudvm.cli import workloads as cli_workloads
from ccloudvm.cli.snapshots import commands as snapshot_commands
from ccloudvm.core import defaults, diskspace, formats, sizes, ui
from ccloudvm.core.errors import CcloudvmError, CreateInterrupted, UsageError
from ccloudvm.core.specs import MountSpec, PortSpec
from ccloudvm.instance.status import status as status_of
from ccloudvm.state.instance_state import creating_names, instance_names
from ccloudvm.state.paths import StateDir, refuse_root_in_foreign_state

_debug = False


def _state() -> StateDir:
    return StateDir.from_env()


def _pick_instance(name: str | None) -> str:
    """An explicit name, or the only instance there is."""
    if name:
        return name
    names = instance_names(_state())
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError("there are no instances", hint="create one with 'ccloudvm create debian'")
    raise UsageError("more than one instance exists; name one", hint="names: " + ", ".join(names))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


class _Group(click.Group):
    """The top-level group: also knows commands by their aliases (`ls` for `instances`).

    Aliases are left out of --help's list and of completion; each command's help names its own.
    """

    aliases = {"ls": "instances", "list": "instances", "shell": "connect"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show host commands as they run and full tracebacks.")
@click.version_option(__version__, prog_name="ccloudvm")
@click.pass_context
def cli(context: click.Context, debug: bool) -> None:
    """ccloudvm: a development environment, or a whole cluster, inside one VM.

    \b
    Quick start:
      ccloudvm setup              check (and install) what the host needs
      ccloudvm create debian      build/download the image, boot a VM, provision it
      ccloudvm run NAME -- CMD    run a command in it
      ccloudvm connect NAME       open a shell in it

    State lives in ~/.ccloudvm (or $CCLOUDVM_HOME). Acceleration is chosen
    automatically (KVM when it really works, TCG otherwise); --accel or
    $CCLOUDVM_ACCEL override it.
    """
    global _debug
    _debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s"
    )
    if not debug:
        # paramiko logs every failed connection attempt while a guest boots; that is expected.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    if context.invoked_subcommand not in _ROOT_MAY_RUN:
        refuse_root_in_foreign_state(_state())


# Commands that write nothing into the state directory (setup installs host packages).
_ROOT_MAY_RUN = {None, "setup", "version", "completion"}


# ---------------------------------------------------------------- lifecycle


@cli.command()
@click.argument("workload", shell_complete=completion.complete_workloads)
@click.option("--name", help="Instance name (also the guest's hostname). Default: a random one.")
@click.option(
    "--mem",
    type=sizes.MIB,
    help="Memory: 512M, 4G, 4GiB, 1.5G, or a plain number of MiB. Default: the workload's, else half the host's (1-8 GiB) under "
    "KVM, up to 2 GiB under TCG.",
)
@click.option(
    "--cpus",
    type=int,
    help="vCPUs. Default: the workload's, else half the host's (1-8) under KVM, every host "
    "CPU up to 4 under TCG.",
)
@click.option(
    "--disk",
    type=sizes.GIB,
    help="Disk size: 20G, 1T, 1.5G (rounded up to whole GiB), or a plain number of GiB. "
    "Default: the workload's, else 20 GiB.",
)
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    metavar="HOST:GUEST[:ro]",
    help="Share a host folder over 9p (repeatable).",
)
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="[ADDR:]HOST:GUEST",
    help="Forward a guest TCP port to ADDR:HOST on the host (repeatable). ADDR is a "
    "loopback address, 127.0.0.1 (localhost) when left out.",
)
@click.option(
    "--drive",
    "drives",
    multiple=True,
    metavar="PATH,format=F",
    help="Attach an extra disk (repeatable).",
)
@click.option(
    "--image",
    help="Use this image instead of the workload's (a definition or a saved image).",
    shell_complete=completion.complete_images,
)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    help="Accelerator (default auto; env CCLOUDVM_ACCEL).",
)
@click.option(
    "--driver",
    type=click.Choice(["qemu", "libvirt"]),
    default="qemu",
    show_default=True,
    help="What runs the VM: QEMU started by ccloudvm, or a libvirt domain (kept for its life).",
)
@click.option(
    "--connect",
    metavar="URI",
    help="The libvirt URI for --driver libvirt (default qemu:///session).",
)
@click.option(
    "--no-proxy-propagation",
    is_flag=True,
    help="Do not carry the host's proxy settings into the guest.",
)
@click.option(
    "--ca-cert",
    "ca_certs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Install an extra CA certificate in the guest (repeatable).",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Provision afresh even if a saved build of this workload exists.",
)
@click.option(
    "--timeout",
    type=float,
    default=defaults.BOOT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the guest to be ready.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Print the provision steps' output as it comes (it is always kept in provision.log).",
)
def create(workload: str, name: str | None, mem: int | None, cpus: int | None, disk: int | None,
           mounts: tuple[str, ...], ports: tuple[str, ...], drives: tuple[str, ...], image: str | None,
           accel: str | None, driver: str, connect: str | None, no_proxy_propagation: bool, ca_certs: tuple[Path, ...], no_cache: bool,
           timeout: float, verbose: bool) -> None:  # fmt: skip
    """Create an instance of WORKLOAD, boot it and provision it.

    WORKLOAD is a file in ~/.ccloudvm/workloads, a bundled name (see 'ccloudvm
    workloads'; yours override bundled ones of the same name), a path to a YAML
    file, or an http(s) URL. The provision steps' output is kept: 'ccloudvm logs
    NAME --provision'.
    """
    from ccloudvm.app import workflow
    from ccloudvm.vm import accel as accel_mod
    from ccloudvm.vm import drivers

    options = workflow.CreateOptions(
        name=name, mem_mib=mem, cpus=cpus, disk_gib=disk,
        ports=[PortSpec.parse(p) for p in ports],
        mounts=[MountSpec.parse(m, i) for i, m in enumerate(mounts)],
        drives=list(drives), image=image,
        accel_mode=accel_mod.requested_mode(accel),
        propagate_proxy=not no_proxy_propagation, ca_certs=list(ca_certs),
        use_cache=not no_cache, timeout=timeout, verbose=verbose,
        driver=driver, connect=drivers.check_choice(driver, connect),
    )  # fmt: skip
    inst = workflow.create(_state(), workload, options)
    ui.info(f"\nConnect with: ccloudvm connect {inst.name}   (or: ccloudvm run {inst.name} -- CMD)")


def _resize_options(command: Any) -> Any:
    for option in reversed((
        click.option("--mem", type=sizes.MIB, help="New memory size: 4G, 512M, or MiB."),
        click.option("--cpus", type=int, help="New number of vCPUs."),
        click.option("--disk", type=sizes.GIB, help="New disk size: 40G, or GiB (it only grows)."),
    )):  # fmt: skip
        command = option(command)
    return command


def _targets(names: tuple[str, ...], every: bool, *, pick: bool = True) -> list[str]:
    """The instances a command acts on: NAMES (each once), --all, or else the only one."""
    if every and names:
        raise UsageError("give instance names or --all, not both")
    if every:
        return instance_names(_state())
    if not names:
        if not pick:
            raise UsageError("name the instance(s) to act on, or give --all")
        return [_pick_instance(None)]
    return list(dict.fromkeys(names))


def _each(names: list[str], action: Callable[[str], object]) -> None:
    """`action` on every name; a failure is one line and does not stop the others.

    With one name its error is raised as before. With several, each failure is printed
    as it happens ('error: NAME: what went wrong (hint)') and the exit status is non-zero
    at the end: the failures' own status when they share one, else 1."""
    if len(names) == 1:
        action(names[0])
        return
    codes = []
    for name in names:
        try:
            action(name)
        except (CcloudvmError, OSError) as exc:
            if _debug:
                raise
            if isinstance(exc, CcloudvmError):
                message, hint, code = exc.message, exc.hint, exc.exit_code
            else:
                where = f": {exc.filename}" if exc.filename else ""
                message, hint, code = f"{exc.strerror or exc}{where}", None, 1
            if repr(name) not in message and name not in message.split():
                message = f"{name}: {message}"
            _print_error(message, hint)
            codes.append(code)
    if codes:
        sys.exit(codes[0] if len(set(codes)) == 1 else 1)


_NAMES = click.argument(
    "names", nargs=-1, metavar="[NAME]...", shell_complete=completion.complete_instances
)


def _all_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--all", "every", is_flag=True, help=f"{what} every instance.")


@cli.command()
@_NAMES
@_all_option("Boot")
@click.option("--timeout", type=float, default=defaults.BOOT_TIMEOUT, show_default=True)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    help="Accelerator for this and later boots (default: what create chose, or $CCLOUDVM_ACCEL).",
)
@_resize_options
def start(
    names: tuple[str, ...], every: bool, timeout: float, accel: str | None, mem: int | None,
    cpus: int | None, disk: int | None,
) -> None:  # fmt: skip
    """Boot stopped instances (also recovers one whose QEMU died), one after the other.
    --mem, --cpus and --disk resize them first, for this and later boots (a disk only grows).

    Without NAME: the only instance there is. One that fails to boot does not stop the
    others; the exit status is non-zero if any failed.
    """
    from ccloudvm.instance import lifecycle as instance
    from ccloudvm.vm import accel as accel_mod

    chosen = accel or os.environ.get(accel_mod.ENV_ACCEL)
    mode = accel_mod.requested_mode(chosen) if chosen else None
    resize = instance.Resize(mem_mib=mem, cpus=cpus, disk_gib=disk)
    state = _state()
    _each(
        _targets(names, every),
        lambda name: instance.start(state, name, timeout, accel_mode=mode, resize=resize),
    )


@cli.command()
@click.argument("name", required=False, shell_complete=completion.complete_instances)
@click.option("--timeout", type=float, default=defaults.BOOT_TIMEOUT, show_default=True)
@_resize_options
def restart(
    name: str | None, timeout: float, mem: int | None, cpus: int | None, disk: int | None
) -> None:
    """Stop the instance politely and start it again; --mem, --cpus and --disk resize it
    in between (kept for later boots; a disk only grows)."""
    from ccloudvm.instance import lifecycle as instance

    resize = instance.Resize(mem_mib=mem, cpus=cpus, disk_gib=disk)
    instance.restart(_state(), _pick_instance(name), timeout, resize=resize)


@cli.command()
@_NAMES
@_all_option("Stop")
@click.option(
    "--timeout",
    type=float,
    default=defaults.STOP_TIMEOUT,
    show_default=True,
    help="Seconds to wait for each guest to power off before its QEMU is quit.",
)
def stop(names: tuple[str, ...], every: bool, timeout: float) -> None:
    """Shut instances down cleanly (ACPI power-off, then quit QEMU if it hangs).

    Without NAME: the only instance there is. A failure on one does not stop the others;
    the exit status is non-zero if any failed.
    """
    from ccloudvm.instance import lifecycle as instance

    state = _state()
    _each(_targets(names, every), lambda name: instance.stop(state, name, timeout))


@cli.command("quit")
@_NAMES
@_all_option("Quit")
def quit_command(names: tuple[str, ...], every: bool) -> None:
    """Stop instances' QEMU at once (like pulling the plug).

    Without NAME: the only instance there is. A failure on one does not stop the others;
    the exit status is non-zero if any failed.
    """
    from ccloudvm.instance import lifecycle as instance

    state = _state()
    _each(_targets(names, every), lambda name: instance.quit_instance(state, name))


def _confirm_deletion(names: list[str], yes: bool, command: str) -> None:
    """Every instance goes only with --yes, or when the user says so at a terminal."""
    if yes:
        return
    listed = ", ".join(names)
    if not sys.stdin.isatty():
        raise UsageError(
            f"{command} would delete {len(names)} instance(s): {listed}",
            hint="add --yes to confirm",
        )
    click.confirm(f"Delete {len(names)} instance(s): {listed}?", abort=True)


@cli.command()
@_NAMES
@_all_option("Delete")
@click.option("--yes", is_flag=True, help="With --all: do not ask for confirmation.")
def delete(names: tuple[str, ...], every: bool, yes: bool) -> None:
    """Delete instances: their QEMU, disk, keys and logs. Their images stay cached.

    NAME is required (several may be given); --all deletes every instance, as teardown
    does, and asks first unless --yes. A failure on one does not stop the others; the
    exit status is non-zero if any failed.
    """
    from ccloudvm.instance import lifecycle as instance

    state = _state()
    targets = _targets(names, every, pick=False)
    if every:
        if not targets:
            ui.info("no instances")
            return
        _confirm_deletion(targets, yes, "delete --all")
    _each(targets, lambda name: instance.delete(state, name))


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def teardown(yes: bool) -> None:
    """Delete every instance (the same as 'delete --all')."""
    from ccloudvm.instance import lifecycle as instance

    state = _state()
    names = instance_names(state)
    if not names:
        ui.info("no instances")
        return
    _confirm_deletion(names, yes, "teardown")
    _each(names, lambda name: instance.delete(state, name))


def _format_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--format table|json|yaml|csv and its older alias --json."""
    command = click.option("--json", "as_json", is_flag=True, help="The same as --format json.")(
        command
    )
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(formats.FORMATS),
        help="Output format: table (the default), or json, yaml, csv for scripts.",
    )(command)


_INSTANCE_COLUMNS: list[formats.Column] = [
    ("NAME", lambda r: r["name"]),
    ("STATE", lambda r: r["state"]),
    ("WORKLOAD", lambda r: r["workload"]),
    ("IMAGE", lambda r: r["image"]),
    ("CPUS", lambda r: r["cpus"]),
    ("MEM", lambda r: f"{r['mem_mib']} MiB"),
    ("SSH", lambda r: r["ssh"]),
    ("PORTS", lambda r: r["ports"]),
    ("DRIVER", lambda r: _driver_cell(r["driver"])),
]


@cli.command("instances")
@_format_options
@click.option("-q", "--quiet", is_flag=True, help="Print only the names, one a line.")
def instances_command(fmt: str | None, as_json: bool, quiet: bool) -> None:
    """List instances with their state and how to reach them (aliases: ls, list).

    STATE: running, stopped, crashed (QEMU died though nobody stopped it), creating (a
    create is at work, from its image download on), failed (a create ended without a
    ready guest: 'ccloudvm logs NAME' shows why, 'ccloudvm delete NAME' removes it),
    suspended ('ccloudvm resume NAME' continues it).
    CSV has every field of --format json, a list's items joined by '; '.
    """
    chosen = formats.choose(fmt, as_json)
    if quiet and (fmt or as_json):
        raise UsageError("-q prints names only; it takes no --format or --json")
    state = _state()
    names = sorted({*instance_names(state), *creating_names(state)})
    if quiet:  # no QEMU asked: fast enough for shell completion and scripts
        for name in names:
            click.echo(name)
        return
    rows = []
    for name in names:
        try:
            rows.append(status_of(state, name))
        except CcloudvmError as exc:  # one damaged instance must not hide the others
            ui.warn(str(exc))
    if not rows and chosen == "table":
        ui.info("no instances (create one with 'ccloudvm create debian')")
        return
    click.echo(formats.render_list(rows, chosen, _INSTANCE_COLUMNS), nl=False)


def _driver_cell(driver: str) -> str:
    """'qemu', or 'libvirt' and where its domain runs: 'libvirt (local)', 'libvirt@HOST'."""
    kind, _, uri = driver.partition(" ")
    if kind != "libvirt":
        return kind
    from urllib.parse import urlsplit

    host = urlsplit(uri).hostname
    return f"libvirt@{host}" if host else "libvirt (local)"


@cli.command()
@click.argument("name", required=False, shell_complete=completion.complete_instances)
@_format_options
def status(name: str | None, fmt: str | None, as_json: bool) -> None:
    """Show one instance's state (from QEMU itself) and settings."""
    chosen = formats.choose(fmt, as_json)
    data = status_of(_state(), _pick_instance(name))
    click.echo(formats.render_record(data, chosen), nl=False)
    if chosen == "table" and data["state"] == "crashed":
        ui.warn(
            f"QEMU is gone although nobody stopped it; 'ccloudvm start {data['name']}' boots it again"
        )


# ---------------------------------------------------------------- using an instance


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "-t",
    "--tty",
    "tty",
    flag_value=True,
    default=None,
    help="Give the command a terminal (default: when stdin and stdout are ones).",
)
@click.option("-T", "--no-tty", "tty", flag_value=False, help="Never give it a terminal.")
@click.option("-w", "--workdir", metavar="DIR", help="Run it in this guest folder.")
@click.argument("name", shell_complete=completion.complete_instances)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(name: str, tty: bool | None, workdir: str | None, command: tuple[str, ...]) -> NoReturn:
    """Run COMMAND in the instance as over ssh: stdin passed in, stdout and stderr kept
    apart, its exit status ours; a terminal (-t) for commands that want one.

    \b
    Examples: ccloudvm run dev -- uname -a
              cat notes.txt | ccloudvm run dev -- tee notes.txt
              ccloudvm run dev -t -- sudo apt upgrade
    """
    argv = list(command)
    # Options after NAME too, as users write them: run dev -t -w /srv -- CMD.
    while argv and argv[0] in ("-t", "--tty", "-T", "--no-tty", "-w", "--workdir"):
        flag = argv.pop(0)
        if flag in ("-w", "--workdir"):
            if not argv:
                raise UsageError(f"{flag} needs a folder", hint="for example: -w /srv")
            workdir = argv.pop(0)
        else:
            tty = flag in ("-t", "--tty")
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given", hint=f"for example: ccloudvm run {name} -- uname -a")
    if tty is None:
        tty = sys.stdin.isatty() and sys.stdout.isatty()
    _exec_ssh(name, argv, tty=tty, workdir=workdir)


def _exec_ssh(
    name: str, argv: list[str] | None, *, tty: bool, workdir: str | None = None
) -> NoReturn:
    """Become the system ssh to the instance (host key pinned): it passes stdin, stderr,
    terminals, signals and the exit status on as a user expects of ssh."""
    from ccloudvm.instance import lifecycle as instance

    remote = None
    if argv:
        # ssh hands the guest's shell one string: every word quoted, as over plain ssh.
        remote = shlex.join(argv)
        if workdir:
            remote = f"cd -- {shlex.quote(workdir)} && exec {remote}"
    ssh = instance.ssh_argv(_state(), name, [remote] if remote else None, tty=tty)
    os.execv(ssh[0], ssh)  # noqa: S606 - argv list built by us, no local shell


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", required=False, shell_complete=completion.complete_instances)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def connect(name: str | None, command: tuple[str, ...]) -> NoReturn:
    """Open an interactive shell in the instance (system ssh, host key pinned), or run
    COMMAND there with a terminal: ccloudvm connect dev -- htop. Also: 'shell'."""
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    # Without a command ssh decides itself (a terminal when stdin is one).
    _exec_ssh(_pick_instance(name), argv or None, tty=bool(argv))


@cli.command("ssh-config")
@click.argument("name", required=False, shell_complete=completion.complete_instances)
def ssh_config(name: str | None) -> None:
    """Print an ssh_config stanza, so plain ssh, scp and editors can connect.

    \b
    Example: ccloudvm ssh-config dev >> ~/.ssh/config && ssh dev
    """
    from ccloudvm.instance import lifecycle as instance

    click.echo(instance.ssh_config(_state(), _pick_instance(name)), nl=False)


@cli.command()
@click.argument("name", shell_complete=completion.complete_instances)
@click.argument("paths", nargs=-1, required=True, metavar="SOURCE... DEST")
@click.option("-r", "--recursive", is_flag=True, help="Copy folders.")
def copy(name: str, paths: tuple[str, ...], recursive: bool) -> None:
    """Copy files between the host and the instance; guest paths start with ':'.

    \b
    ccloudvm copy dev ./file :/tmp/          host -> guest
    ccloudvm copy dev :/etc/os-release .     guest -> host
    ccloudvm copy dev -r ./src :/home/me/src folders
    ccloudvm copy dev a.txt b.txt :/tmp/     several, into a folder (as scp)
    """
    from ccloudvm.instance import lifecycle as instance
    from ccloudvm.remote import transfer

    if len(paths) < 2:
        raise UsageError(
            "give SOURCE... and DEST", hint="for example 'ccloudvm copy dev ./file :/tmp/'"
        )
    with instance.connect_target(_state(), name) as target:
        transfer.copy_many(target, list(paths[:-1]), paths[-1], recursive=recursive)


@cli.command()
@click.argument("name", required=False, shell_complete=completion.complete_instances)
@click.option(
    "--cloud-init",
    "cloud_init",
    is_flag=True,
    help="Show /var/log/cloud-init-output.log from the guest instead of the console.",
)
@click.option(
    "--provision",
    "provision_log",
    is_flag=True,
    help="Show the output of every provision run (create, provision) instead of the console.",
)
@click.option("-n", "--lines", type=int, default=0, help="Only the last N lines.")
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing the console as it grows, from a create's first second (while it "
    "fetches its image the console is still empty), until the VM stops or Ctrl-C.",
)
def logs(name: str | None, cloud_init: bool, provision_log: bool, lines: int, follow: bool) -> None:
    """Show the serial console log (or cloud-init's output log from the guest, or the
    provision steps' output)."""
    from ccloudvm.instance import lifecycle as instance

    state = _state()
    name = _pick_instance(name)
    if cloud_init and provision_log:
        raise UsageError("--cloud-init and --provision show different logs; give one")
    if follow and (cloud_init or provision_log):
        raise UsageError("--follow follows the console only", hint="leave out --follow")
    if provision_log:
        from ccloudvm.app import workflow
        from ccloudvm.state.instance_state import load_state

        load_state(state, name)
        path = workflow.provision_log(state, name)
        if not path.exists():
            raise UsageError(
                f"{name!r} has no provision log yet: its workload's steps have not run",
                hint=f"run them with 'ccloudvm provision {name}'",
            )
        text = path.read_text(errors="replace")
    elif cloud_init:
        with instance.connect_target(state, name) as target:
            code, text = target.run_capture(["cat", "/var/log/cloud-init-output.log"], sudo=True)
        if code != 0:
            raise CcloudvmError(
                f"could not read cloud-init-output.log in {name!r}: {text.strip()[-200:]}"
            )
    else:
        from ccloudvm.state.instance_state import creation, files_of, load_state

        files = files_of(state, name)
        if creation(files) is None:
            load_state(state, name)  # a missing instance fails here
        path = files.serial
        raw = path.read_bytes() if path.exists() else b""
        text = raw.decode(errors="replace")
        if follow:
            from ccloudvm.core import logfollow
            from ccloudvm.core import pids as process

            def going() -> bool:
                return creation(files) == "creating" or (
                    process.running_pid(files.pidfile, files.dir) is not None
                )

            if lines:
                text = "\n".join(text.splitlines()[-lines:]) + "\n"
            click.echo(text, nl=False)
            logfollow.follow(path, len(raw), going)
            return
    if lines:
        text = "\n".join(text.splitlines()[-lines:]) + "\n"
    click.echo(text, nl=False)


# ---------------------------------------------------------------- host


@cli.command()
@click.option("--check", is_flag=True, help="Only report; install nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def setup(check: bool, as_json: bool) -> None:
    """Check what the host needs (QEMU, qemu-img, ssh, mmdebstrap), install what is missing
    with apt-get (as root, or with sudo), and report the acceleration this host offers."""
    from ccloudvm.app import hostsetup

    report = hostsetup.setup(_state(), install=not check)
    if as_json:
        _print_json(report)


@cli.command("version")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def version_command(as_json: bool) -> None:
    """Show ccloudvm's version, QEMU's, the acceleration a VM would get and why, and the
    state directory. (--version prints ccloudvm's version only.)"""
    from ccloudvm.cli import version

    data = version.report(_state())
    if as_json:
        _print_json(data)
        return
    for line in version.lines(data):
        click.echo(line)


@cli.command("completion")
@click.argument("shell", type=click.Choice(completion.SHELLS))
def completion_command(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    It completes commands, options, instance, workload and image names.

    \b
    bash:  echo 'eval "$(ccloudvm completion bash)"' >> ~/.bashrc
    zsh:   echo 'eval "$(ccloudvm completion zsh)"' >> ~/.zshrc
    fish:  ccloudvm completion fish > ~/.config/fish/completions/ccloudvm.fish
    """
    click.echo(completion.script(cli, shell))


# The other command groups live in modules of their own.
for _command in (*cli_workloads.commands, *cli_images.commands, *cli_cluster.commands):
    cli.add_command(_command)
for _command in snapshot_commands:
    cli.add_command(_command)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a dead terminal), raised like ^C so clean-ups run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.exit_code = 128 + signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def _install_signal_handlers() -> None:
    import signal

    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            signal.signal(signum, _raise_terminated)


def main(argv: list[str] | None = None) -> None:
    _install_signal_handlers()
    try:
        cli.main(args=argv, prog_name="ccloudvm", standalone_mode=False)
    except click.exceptions.Abort:
        ui.console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CcloudvmError as exc:
        if _debug:
            raise
        if diskspace.is_disk_full(exc) and not isinstance(exc, diskspace.NoSpaceError):
            exc = diskspace.no_space_error(_state().root)  # a host command met a full disk
        _fail(exc.message, exc.hint, exc.exit_code)
    except CreateInterrupted as exc:
        if exc.removed:
            ui.console.print(f"interrupted; removed the half-made instance {exc.name}")
        else:
            ui.console.print(
                f"interrupted; {exc.name} stays, not provisioned "
                f"('ccloudvm provision {exc.name}' runs the steps again)"
            )
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        ui.console.print("interrupted")
        sys.exit(getattr(exc, "exit_code", 130))
    except OSError as exc:  # the host refused something we did not foresee: still one line
        if _debug:
            raise
        if diskspace.is_disk_full(exc):
            full = diskspace.no_space_error(Path(exc.filename or _state().root))
            _fail(full.message, None, full.exit_code)
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}", "run with --debug for the details", 1)


def _print_error(message: str, hint: str | None) -> None:
    text = f"error: {message}" + (f" ({hint})" if hint else "")
    ui.console.print(
        text, markup=False, highlight=False, style="red" if sys.stderr.isatty() else None
    )


def _fail(message: str, hint: str | None, code: int) -> NoReturn:
    _print_error(message, hint)
    sys.exit(code)
