"""A cached image folder as ccloudvm's cache holds one, without building anything."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ccloudvm.images import catalog as images
from ccloudvm.state.paths import StateDir


def cached_image(state: StateDir, name: str, kind: str, key: str) -> Path:
    directory = images.images_dir(state) / f"{name}-{key}"
    directory.mkdir(parents=True)
    (directory / images.DISK).write_bytes(b"qcow2")
    meta = {"name": name, "kind": kind, "key": key, "created": time.time()}
    (directory / images.METADATA).write_text(json.dumps(meta))
    return directory
