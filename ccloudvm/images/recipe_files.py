"""The files a build recipe writes into the image: text, or the source of a module.

Code that runs in the guest (ccloudvm.images.cloud_init_all) lives in a module of this
package, where lint and the tests cover it, and the recipe names it:

    files:
      /usr/lib/ccloudvm/cloud-init-all: {module: ccloudvm.images.cloud_init_all}

The module's source text goes into the image as it is, and into the recipe's cache key:
a changed module builds a new image.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

_MODULE_NAME = re.compile(r"^ccloudvm(\.[a-z_][a-z0-9_]*)+$")
_SHAPE = "'files' must map absolute paths to text or to {module: ccloudvm.NAME}"


def file_texts(files: object) -> dict[str, str]:
    """`files` of a recipe as guest path -> text; ValueError names what is wrong."""
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
        raise ValueError(_SHAPE)
    return {path: _text(path, value) for path, value in files.items()}


def _text(path: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict) or set(value) != {"module"}:
        raise ValueError(_SHAPE)
    return module_source(value["module"], path)


def module_source(name: object, path: str = "") -> str:
    """The source text of ccloudvm module `name` (not imported: only found)."""
    where = f"'files' entry {path}" if path else "'files'"
    if not isinstance(name, str) or not _MODULE_NAME.match(name):
        raise ValueError(f"{where}: {name!r} is not a module of ccloudvm (ccloudvm.NAME)")
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        spec = None
    is_file = spec is not None and spec.submodule_search_locations is None  # not a package
    origin = spec.origin if spec is not None and is_file else None
    if origin is None or not origin.endswith(".py"):
        raise ValueError(f"{where}: no module {name} in this ccloudvm")
    return Path(origin).read_text(encoding="utf-8")
