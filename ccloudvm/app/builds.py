"""Reusable images: saving a provisioned instance, building a workload once, and finding
that build again so `create` never provisions the same thing twice.

A build is keyed as ccloudvm.app.buildindex says.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

from ccloudvm.app import workflow
from ccloudvm.app.buildindex import (
    BUILD_INSTANCE_NAME,
    build_key,
    builds_dir,
    find_build,
    record_build,
)
from ccloudvm.core import diskspace, ui
from ccloudvm.core.errors import CcloudvmError, NotFoundError, StateError, UsageError
from ccloudvm.core.proc import run
from ccloudvm.images import catalog as images
from ccloudvm.images import generalise
from ccloudvm.instance import access, warm
from ccloudvm.instance import lifecycle as instance
from ccloudvm.instance.status import status as instance_status
from ccloudvm.state.instance_state import files_of, instance_names, load_state
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import drivers


def _save_needs(disk: Path) -> int:
    """Bytes a save may write: the guest's data flattened (sparse raw), then compressed
    (at most as big again). qemu-img measure counts the data the whole chain holds."""
    measured = json.loads(run(["qemu-img", "measure", "--output=json", "-O", "qcow2", disk]).stdout)
    return 2 * int(measured.get("required", 0))


def save_instance(
    state: StateDir, name: str, image_name: str, *, offline_generalise: bool = True
) -> images.BaseImage:
    """Turn stopped instance `name` into the reusable image `image_name`."""
    inst = load_state(state, name)
    files = files_of(state, name)
    if drivers.is_remote(inst):
        raise UsageError(
            f"{name!r} runs on another host: its disk is there, not here to save",
            hint="save images from instances on this host (a local --connect or --driver qemu)",
        )
    if instance_status(state, name).state not in ("stopped", "crashed"):
        raise StateError(
            f"{name!r} is running; an image must be saved from a stopped instance",
            hint=f"run 'ccloudvm stop {name}' first",
        )
    if any(i.name == image_name for i in images.cached_images(state)):
        raise UsageError(
            f"an image named {image_name!r} exists already",
            hint=f"choose another name or 'ccloudvm image rm {image_name}'",
        )
    if any(d.name == image_name for d in images.list_definitions(state)):
        raise UsageError(
            f"{image_name!r} is the name of an image definition", hint="choose another name"
        )
    (state.cache / "tmp").mkdir(parents=True, exist_ok=True)
    needed = _save_needs(files.disk)
    diskspace.check_free_space(state.cache, needed)
    with (
        diskspace.reporting_full_disk(state.cache, needed),
        tempfile.TemporaryDirectory(prefix="save-", dir=state.cache / "tmp") as tmp,
    ):
        flat = Path(tmp) / "disk.raw"
        with ui.step(f"Flattening {name}'s disk"):
            run(["qemu-img", "convert", "-O", "raw", files.disk, flat])
        if offline_generalise:
            generalise.generalise(flat, inst.guest_user)
        image = images.save_image(
            state, image_name, flat,
            kernel=Path(inst.image.kernel) if inst.image.kernel else None,
            initrd=Path(inst.image.initrd) if inst.image.initrd else None,
            cmdline=inst.image.cmdline,
            warm_boot=inst.image.warm_boot,
        )  # fmt: skip
    ui.info(f"saved {name} as image {image_name} ({image.disk.stat().st_size / 2**20:.0f} MiB)")
    return image


ONLINE_GENERALISE = """set -eu
cloud-init clean --logs
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*
rm -f "/home/$1/.ssh/authorized_keys"
sync
"""


def build(state: StateDir, ref: str, options: workflow.CreateOptions) -> images.BaseImage:
    """create -> provision -> generalise -> stop -> save, once per workload and base image.
    The workload is read once (a URL fetched once) for the key and the create."""
    loaded = workflow.Loaded(state, ref)
    workload = loaded.render(BUILD_INSTANCE_NAME)
    key = build_key(state, workload)
    existing = find_build(state, key)
    if existing is not None and options.use_cache:
        ui.info(
            f"{workload.name} is already built as image {existing.name} (use --no-cache to rebuild)"
        )
        return existing
    taken = set(instance_names(state))
    name = next(
        f"build-{workload.name}-{n}"
        for n in range(1, 1000)
        if f"build-{workload.name}-{n}" not in taken
    )
    inst = workflow.create(state, loaded, replace(options, name=name, use_cache=False))
    try:
        with access.connect_target(state, inst.name) as target:
            target.put_text(ONLINE_GENERALISE, "/tmp/ccloudvm-generalise.sh", mode=0o700)
            code = target.run(["bash", "/tmp/ccloudvm-generalise.sh", inst.guest_user], sudo=True)
            if code != 0:
                raise CcloudvmError(f"generalising {inst.name} failed with exit status {code}")
        instance.stop(state, inst.name)
        image_name = f"{workload.name}-build-{key[:8]}"
        for old in images.cached_images(state):
            if old.name == image_name:
                images.remove_image(old)
        image = save_instance(state, inst.name, image_name, offline_generalise=False)
        record_build(state, key, image, workload.name)
        warm.prepare_warm_boot(state, inst, image)
    finally:
        instance.delete(state, inst.name)
    return image


def images_in_use(state: StateDir) -> set[Path]:
    """Image directories that an instance's disk is backed by."""
    used = set()
    for name in instance_names(state):
        try:
            used.add(Path(load_state(state, name).image.disk).parent)
        except CcloudvmError:
            continue
    return used


def remove(state: StateDir, name: str) -> None:
    matches = [i for i in images.cached_images(state) if i.name == name]
    if not matches:
        raise NotFoundError(f"no cached image named {name!r}", hint="'ccloudvm images' lists them")
    used = images_in_use(state)
    for image in matches:
        if image.directory in used:
            raise StateError(
                f"image {name!r} backs an instance's disk", hint="delete the instance first"
            )
    for image in matches:
        images.remove_image(image)
        ui.info(f"removed {image.name} ({image.directory.name})")


def prune(state: StateDir) -> list[str]:
    """Remove cached images that no instance uses and no definition or build index points at.

    A damaged build record or definition cannot say what it points at, so while one is
    there the images it might need stay (and the damaged file is named)."""
    used = images_in_use(state)
    wanted_builds = set()
    broken_records = []
    for record in sorted(builds_dir(state).glob("*.json")) if builds_dir(state).is_dir() else []:
        try:
            wanted_builds.add(str(json.loads(record.read_text())["image"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            broken_records.append(record)
            ui.warn(f"build record {record} is damaged ({exc}); remove it, then prune again")
    bad_definitions: list[CcloudvmError] = []
    current_keys = {d.key for d in images.list_definitions(state, bad_definitions)}
    for problem in bad_definitions:
        ui.warn(f"{problem}; images of definitions are kept until it is fixed")
    removed = []
    for image in images.cached_images(state):
        keep = image.directory in used or image.name in wanted_builds
        if image.kind == "saved":
            # A user's own `image save` is theirs: only superseded builds go.
            keep = keep or "-build-" not in image.name or bool(broken_records)
        else:
            keep = keep or image.key in current_keys or bool(bad_definitions)
        if not keep:
            images.remove_image(image)
            removed.append(image.directory.name)
    return removed
