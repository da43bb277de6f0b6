"""The one place where ccloudvm starts host programs.

Every subprocess goes through `run()`: an argv list (never a shell string), no stdin,
the command echoed under --debug, and "program not found" turned into a
ToolMissingError that says how to install it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ccloudvm.core.errors import CcloudvmError, ToolMissingError

log = logging.getLogger("ccloudvm.core.proc")

# Debian package that provides each host program, for "how to install" hints.
PACKAGE_OF = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "dnsmasq": "dnsmasq-base",
    "ip": "iproute2",
    "iptables": "iptables",
    "shellcheck": "shellcheck",
    "newuidmap": "uidmap",
    "newgidmap": "uidmap",
}


# Where administration programs (mkfs.ext4, dnsmasq, ip) live. An ordinary user's PATH
# often lacks them although the programs run fine without root, so they are searched too.
SBIN_DIRS: tuple[str, ...] = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_program(name: str) -> str | None:
    """The full path of host program `name` on PATH or in the sbin folders, else None."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def require_tool(name: str) -> str:
    """Return the full path of host program `name`, or raise with an install hint."""
    path = find_program(name)
    if path is None:
        package = PACKAGE_OF.get(name, name)
        raise ToolMissingError(
            f"{name} is not installed",
            hint=f"run 'ccloudvm setup' or 'sudo apt-get install {package}'",
        )
    return path


class CommandFailed(CcloudvmError):
    """A host program exited non-zero; carries its output for the message."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        tail = " | ".join(line for line in output.strip().splitlines()[-3:])
        super().__init__(f"{Path(argv[0]).name} failed with exit status {returncode}: {tail}")
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a host program and wait for it; raise CommandFailed on failure if `check`."""
    args = [str(a) for a in argv]
    args[0] = require_tool(args[0])
    log.debug("run: %s", shlex.join(args))
    try:
        result = subprocess.run(  # noqa: S603 - argv list, never a shell string
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CcloudvmError(f"{Path(args[0]).name} did not finish within {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, result.stdout or "")
    return result
