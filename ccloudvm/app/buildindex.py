"""The index of saved builds, which `create` and `build` both read.

A build is keyed by the hash of the workload as rendered (for a fixed instance name)
and the key of its base image; the index <cache>/builds/KEY.json names the saved image.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ccloudvm.core.errors import NotFoundError
from ccloudvm.images import catalog as images
from ccloudvm.state.paths import StateDir
from ccloudvm.workloads.definition import Workload, render_workload_yaml

BUILD_INSTANCE_NAME = "ccloudvm-build"  # the name workloads are rendered for when keyed


def builds_dir(state: StateDir) -> Path:
    return state.cache / "builds"


def base_key(state: StateDir, image_name: str) -> str:
    try:
        return images.load_definition(state, image_name).key
    except NotFoundError:
        saved = [i for i in images.cached_images(state) if i.name == image_name]
        if not saved:
            raise
        return saved[-1].key


def build_key(state: StateDir, workload: Workload) -> str:
    digest = hashlib.sha256()
    digest.update(render_workload_yaml(workload).encode())
    digest.update(base_key(state, workload.image).encode())
    return digest.hexdigest()[:16]


def find_build(state: StateDir, key: str) -> images.BaseImage | None:
    record = builds_dir(state) / f"{key}.json"
    try:
        name = json.loads(record.read_text())["image"]
    except (OSError, ValueError, KeyError):
        return None
    for image in images.cached_images(state):
        if image.name == name and image.kind == "saved":
            return image
    return None


def record_build(state: StateDir, key: str, image: images.BaseImage, workload: str) -> None:
    folder = builds_dir(state)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.tmp"
    tmp.write_text(json.dumps({"image": image.name, "workload": workload, "image_key": image.key}))
    os.replace(tmp, folder / f"{key}.json")
