"""The source of a module that a build recipe writes into the image as a file.

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
