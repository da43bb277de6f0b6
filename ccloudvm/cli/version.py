"""`ccloudvm version`: this program's version, QEMU's, the acceleration a VM would get and
why, and the state directory. It asks and writes nothing that a create would not."""

from __future__ import annotations

import os
import platform
from typing import Any

from ccloudvm import __version__
from ccloudvm.core.errors import CcloudvmError
from ccloudvm.core.proc import find_program, run
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import accel

QEMU = "qemu-system-x86_64"


def qemu_version() -> tuple[str | None, str | None]:
    """(QEMU's version line, its path), or (None, None) when it is not installed."""
    path = find_program(QEMU)
    if path is None:
        return None, None
    try:
        result = run([path, "--version"], check=False, timeout=10)
    except (CcloudvmError, OSError) as exc:
        return f"unknown ({exc})", path
    first = (result.stdout or "").strip().splitlines()
    line = first[0] if first else f"unknown (exit status {result.returncode})"
    return line.removeprefix("QEMU emulator version ").strip(), path


def report(state: StateDir) -> dict[str, Any]:
    version, path = qemu_version()
    mode = accel.requested_mode(None)
    chosen = accel.would_use(mode=mode, run_dir=state.run)
    mode_from = f"${accel.ENV_ACCEL}" if os.environ.get(accel.ENV_ACCEL) else "default"
    return {
        "ccloudvm": __version__,
        "python": platform.python_version(),
        "qemu": version,
        "qemu_path": path,
        "accel_mode": mode,
        "accel_mode_from": mode_from,
        "accel": chosen.accel,
        "nested": chosen.nested,
        "accel_reason": chosen.reason,
        "state_dir": str(state.root),
        "state_dir_exists": state.root.is_dir(),
    }


def lines(data: dict[str, Any]) -> list[str]:
    accel_text = data["accel"].upper() + (" with nesting" if data["nested"] else "")
    mode = data["accel_mode"] + (
        f" (from {data['accel_mode_from']})" if data["accel_mode_from"] != "default" else ""
    )
    return [
        f"ccloudvm      {data['ccloudvm']} (Python {data['python']})",
        "qemu          "
        + (
            f"{data['qemu']} ({data['qemu_path']})"
            if data["qemu"]
            else f"{QEMU} not installed ('ccloudvm setup' installs it)"
        ),
        f"acceleration  {accel_text}: {data['accel_reason']} (mode {mode})",
        f"state         {data['state_dir']}"
        + ("" if data["state_dir_exists"] else " (not made yet)"),
    ]
