"""Start-up stays light (issues 9 and 10): the command line, and the commands that only
read state, load none of the heavy libraries; the commands that need them load them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("paramiko", "jinja2", "requests", "qemu.qmp", "pycdlib", "rich.progress", "pydantic")


def _loaded_after(code: str, home: Path) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", probe],
        env={**os.environ, "CCLOUDVM_HOME": str(home)},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return set(json.loads(out.splitlines()[-1]))


def test_importing_the_cli_loads_no_heavy_library(tmp_path: Path) -> None:
    loaded = _loaded_after("import ccloudvm.cli.main", tmp_path)
    assert not [name for name in HEAVY if name in loaded]


def test_help_and_instances_load_no_heavy_library(tmp_path: Path) -> None:
    for argv in (["--help"], ["instances"], ["instances", "--json"]):
        code = (
            "import contextlib, io, ccloudvm.cli.main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            f"    ccloudvm.cli.main.main({argv!r})"
        )
        loaded = _loaded_after(code, tmp_path)
        assert not [name for name in HEAVY if name in loaded], argv


def test_help_loads_neither_instance_state_nor_cluster_code(tmp_path: Path) -> None:
    """--help only describes commands: what they act on is imported when one runs."""
    code = (
        "import contextlib, io, ccloudvm.cli.main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    ccloudvm.cli.main.main(['--help'])"
    )
    loaded = _loaded_after(code, tmp_path)
    lazy = ("ccloudvm.state.instance_state", "ccloudvm.cluster.network", "ccloudvm.core.diskspace")
    assert not [name for name in lazy if name in loaded]


def test_an_error_line_loads_no_rich(tmp_path: Path) -> None:
    code = (
        "import contextlib, io, ccloudvm.cli.main\n"
        "with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    ccloudvm.cli.main.main(['status', 'ghost'])"
    )
    assert not [name for name in _loaded_after(code, tmp_path) if name.startswith("rich")]
