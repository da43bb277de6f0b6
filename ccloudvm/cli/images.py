"""Commands about images: list, build from a recipe, save an instance, build a workload,
remove and prune."""

from __future__ import annotations

import time

import click

from ccloudvm.cli import completion
from ccloudvm.core import sizes, ui
from ccloudvm.state.paths import StateDir


@click.command("images")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def images_command(as_json: bool) -> None:
    """List cached images (built, downloaded, saved) and the definitions not fetched yet.

    WARM: the image's warm-boot snapshots (one per VM size created from it) and the space
    they take; 'ccloudvm image rm' removes them with the image.
    """
    import json

    from rich.table import Table

    from ccloudvm.app import builds
    from ccloudvm.core.errors import CcloudvmError
    from ccloudvm.images import catalog as images
    from ccloudvm.vm import warmboot

    state = StateDir.from_env()
    used = builds.images_in_use(state)
    rows: list[dict[str, object]] = []
    broken: list[str] = []
    for image in images.cached_images(state, broken):
        try:
            meta = json.loads((image.directory / images.METADATA).read_text())
            snapshots = warmboot.snapshots_of(state, image)
        except (OSError, ValueError) as exc:  # one damaged entry must not hide the others
            broken.append(f"cached image {image.directory} is damaged ({exc}); "
                          f"'ccloudvm image rm {image.name}' and fetch it again")  # fmt: skip
            continue
        rows.append({
            "name": image.name, "kind": image.kind, "key": image.key,
            "size_mib": round(sum(p.stat().st_size for p in image.directory.iterdir() if p.is_file()) / 2**20),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(float(meta.get("created", 0)))),
            "in_use": image.directory in used, "path": str(image.directory),
            "warm_snapshots": len(snapshots),
            "warm_snapshots_mib": round(sum(
                p.stat().st_size for snap in snapshots for p in snap.directory.iterdir()
            ) / 2**20),
        })  # fmt: skip
    cached = {r["name"] for r in rows}
    bad_definitions: list[CcloudvmError] = []
    definitions = images.list_definitions(state, bad_definitions)
    broken += [str(exc) for exc in bad_definitions]
    for problem in broken:
        ui.warn(problem)
    for definition in definitions:
        if definition.name not in cached:
            rows.append({"name": definition.name, "kind": f"not fetched ({definition.kind})", "key": definition.key,
                         "size_mib": 0, "created": "", "in_use": False, "path": str(definition.path),
                         "warm_snapshots": 0, "warm_snapshots_mib": 0})  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(box=None)
    for column in ("NAME", "KIND", "SIZE", "WARM", "CREATED", "IN USE", "KEY"):
        table.add_column(column)
    for r in rows:
        size = f"{r['size_mib']} MiB" if r["size_mib"] else "-"
        table.add_row(
            str(r["name"]),
            str(r["kind"]),
            size,
            f"{r['warm_snapshots']} ({r['warm_snapshots_mib']} MiB)"
            if r["warm_snapshots"]
            else "-",
            str(r["created"] or "-"),
            "yes" if r["in_use"] else "",
            str(r["key"]),
        )
    ui.out.print(table)


@click.group("image")
def image_group() -> None:
    """Build, save and remove images."""


@image_group.command("build")
@click.argument("recipe", shell_complete=completion.complete_images)
def image_build(recipe: str) -> None:
    """Build (or download) image RECIPE into the cache; again only when its recipe changed.

    For an image that supports warm boot, it also makes the snapshot that a plain
    'ccloudvm create' (default size, no mounts) starts from, so the first create is warm.
    """
    from ccloudvm.images import catalog as images
    from ccloudvm.instance import warm

    start = time.monotonic()
    state = StateDir.from_env()
    image = images.ensure_image(state, recipe)
    # The snapshot a plain 'ccloudvm create' starts from, so the first create is warm.
    warm.prepare_default_warm_boot(state, image)
    ui.info(f"{image.name} is ready in {image.directory} ({time.monotonic() - start:.1f} s)")


@image_group.command("snapshot")
@click.argument("recipe", shell_complete=completion.complete_images)
@click.option(
    "--mem",
    type=sizes.MIB,
    help="Memory: 512M, 2G, or a plain number of MiB (default: as create's).",
)
@click.option("--cpus", type=int, help="vCPUs (default: as create's).")
@click.option("--nested", is_flag=True, help="For instances with nested virtualisation.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), help="Accelerator.")
def image_snapshot(
    recipe: str, mem: int | None, cpus: int | None, nested: bool, accel: str | None
) -> None:
    """Make image RECIPE's warm-boot snapshot for instances of this size now.

    Creates of that size (and no more than four mounts) then start from it in seconds. A
    create of a size without one boots cold and runs this in the background afterwards.
    """
    from ccloudvm.images import catalog as images
    from ccloudvm.instance import warm

    state = StateDir.from_env()
    image = images.ensure_image(state, recipe)
    warm.prepare_shape_warm_boot(
        state, image, mem_mib=mem, cpus=cpus, nested=nested, accel_mode=accel
    )


@image_group.command("save")
@click.argument("instance", shell_complete=completion.complete_instances)
@click.argument("name")
def image_save(instance: str, name: str) -> None:
    """Save stopped INSTANCE as reusable image NAME (flattened, compressed, generalised).

    'ccloudvm create WORKLOAD --image NAME' then starts from it.
    """
    from ccloudvm.app import builds

    builds.save_instance(StateDir.from_env(), instance, name)


@image_group.command("rm")
@click.argument("name", shell_complete=completion.complete_images)
def image_rm(name: str) -> None:
    """Remove cached image NAME (refused while an instance's disk is backed by it)."""
    from ccloudvm.app import builds

    builds.remove(StateDir.from_env(), name)


@image_group.command("prune")
def image_prune() -> None:
    """Remove images that no instance uses: stale base images and superseded builds."""
    from ccloudvm.app import builds

    removed = builds.prune(StateDir.from_env())
    ui.info("removed: " + ", ".join(removed) if removed else "nothing to prune")


@click.command("build")
@click.argument("workload", shell_complete=completion.complete_workloads)
@click.option(
    "--no-cache", is_flag=True, help="Provision and save again even if this build exists."
)
@click.option(
    "--accel", type=click.Choice(["auto", "kvm", "tcg"]), help="Accelerator for the build VM."
)
@click.option(
    "--timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="Seconds to wait for the build VM to be ready.",
)
def build_command(workload: str, no_cache: bool, accel: str | None, timeout: float) -> None:
    """Create WORKLOAD, provision it, and save it as an image that 'create' then reuses."""
    from ccloudvm.app import builds
    from ccloudvm.app.workflow import CreateOptions
    from ccloudvm.vm import accel as accel_mod

    options = CreateOptions(
        accel_mode=accel_mod.requested_mode(accel), use_cache=not no_cache, timeout=timeout
    )
    image = builds.build(StateDir.from_env(), workload, options)
    ui.info(f"'ccloudvm create {workload}' now starts from image {image.name}")


commands = [images_command, image_group, build_command]
