"""`ccloudvm create`: a new instance of a workload, booted and provisioned."""

from __future__ import annotations

from pathlib import Path

import click

from ccloudvm.cli import completion
from ccloudvm.cli.targets import state_dir
from ccloudvm.core import defaults, sizes, ui


@click.command()
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
    help="The libvirt URI for --driver libvirt (default qemu:///session); on another host "
    "qemu+ssh://USER@HOST/system: image and seed are uploaded there, SSH goes through it, "
    "no --mount/--port/--drive.",
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
    from ccloudvm.core.specs import MountSpec, PortSpec
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
    inst = workflow.create(state_dir(), workload, options)
    ui.info(f"\nConnect with: ccloudvm connect {inst.name}   (or: ccloudvm run {inst.name} -- CMD)")


commands = [create]
