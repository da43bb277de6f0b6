"""Waiting until a booting guest is ready: cloud-init finished and SSH answering.

cloud-init prints our marker on the serial console when its last stage ends (see
seed.READY_MARKER), so the host follows the serial log instead of polling SSH on a
timer; the log also tells the user which boot stage the guest is in.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError
from ccloudvm.guest.seed import READY_MARKER

# Terminal control sequences on the console: CSI (colours, cursor moves) and the remnant of
# one cut at the start of a read ("[0m" without its ESC), and other control characters.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|\[[0-9;]*m|[\x00-\x08\x0b-\x1f\x7f]")
_STAGE_PATTERNS = (
    re.compile(r"cloud-init\[\d+\]: Cloud-init v\. \S+ running '([^']+)'"),
    re.compile(r"Starting (\S+?)(?: - .*)?\.\.\.\s*$"),
    re.compile(r"Reached target (\S+)"),
    re.compile(r"^\[\s*[\d.]+\] (Run /init|EXT4-fs \(vda\): mounted)"),
)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no serial log)"
    clean = _ANSI.sub("", text)
    return "\n".join(clean.strip().splitlines()[-lines:])


def current_stage(text: str) -> str | None:
    for line in reversed(_ANSI.sub("", text).splitlines()[-40:]):
        for pattern in _STAGE_PATTERNS:
            match = pattern.search(line)
            if match:
                return match.group(1).strip()
    return None


class BootFailed(CcloudvmError):
    pass


def wait_for_marker(
    serial_log: Path,
    *,
    deadline: float,
    is_alive: Callable[[], bool],
    on_stage: Callable[[str], None],
    name: str,
    marker: str = READY_MARKER,
) -> None:
    """Follow the serial log until `marker` (by default cloud-init's ready marker) appears."""
    offset = 0
    buffer = ""
    while True:
        try:
            with serial_log.open("r", errors="replace") as log:
                log.seek(offset)
                chunk = log.read()
                offset = log.tell()
        except FileNotFoundError:
            chunk = ""
        if chunk:
            buffer = (buffer + chunk)[-20000:]
            if marker in buffer:
                return
            stage = current_stage(buffer)
            if stage:
                on_stage(stage)
        if not is_alive():
            raise BootFailed(
                f"QEMU for {name!r} exited while the guest was booting; last console lines:\n"
                + log_tail(serial_log),
                hint=f"see 'ccloudvm logs {name}'",
            )
        if time.monotonic() >= deadline:
            raise BootFailed(
                f"{name!r} was not ready in time; last console lines:\n" + log_tail(serial_log),
                hint=f"'ccloudvm logs {name}' shows the console; 'ccloudvm delete {name}' removes it",
            )
        time.sleep(0.2)


# Images built by ccloudvm print cloud-init's result.json on one console line after the
# last stage (images/debian-12.yaml), which saves reading it over SSH.
RESULT_MARKER = "CCLOUDVM-RESULT"


def console_result(serial_log: Path) -> str | None:
    """The result.json the guest printed on the console this boot, if it did."""
    try:
        text = serial_log.read_text(errors="replace")
    except OSError:
        return None
    found = None
    for line in text.splitlines():
        at = line.find(RESULT_MARKER + " {")
        if at >= 0:
            found = line[at + len(RESULT_MARKER) + 1 :].strip()
    return found


def cloud_init_errors(result_json: str) -> list[str]:
    """Errors cloud-init recorded in /run/cloud-init/result.json."""
    try:
        data = json.loads(result_json)
    except ValueError:
        return []
    errors = data.get("v1", {}).get("errors", [])
    # Each entry is a (module, exception repr) pair; its first line is what a user needs.
    return [str(e).replace("\\n", "\n").splitlines()[0][:160] for e in errors]


def report_stage(status: ui.Status) -> Callable[[str], None]:
    last = [""]

    def update(stage: str) -> None:
        if stage != last[0]:
            last[0] = stage
            status.update(stage)

    return update
