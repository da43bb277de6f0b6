"""The host itself as a Target: bare-metal mode runs the same steps here.

Commands are argv lists (never a shell string), their output is streamed line by line,
and sudo is `sudo -n` (never a password prompt) unless we already are root.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

from ccloudvm.core.errors import CcloudvmError
from ccloudvm.core.proc import require_tool
from ccloudvm.remote.target import OutputSink, check_env_names

log = logging.getLogger("ccloudvm.core.proc")  # every host program is logged under one name


class LocalTarget:
    """Runs commands on this host as the current user (or root through sudo -n)."""

    def __init__(self, name: str = "localhost") -> None:
        self.name = name

    def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        output: OutputSink | None = None,
        sudo: bool = False,
        timeout: float | None = None,
    ) -> int:
        args = list(argv)
        check_env_names(env)  # they become `env K=V` words under sudo
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        if sudo and os.geteuid() != 0:
            # sudo resets the environment; pass ours explicitly through env(1).
            extra = [f"{key}={value}" for key, value in (env or {}).items()]
            args = [require_tool("sudo"), "-n", "env", *extra, *args]
        else:
            args[0] = require_tool(args[0]) if "/" not in args[0] else args[0]
        log.debug("run: %s", shlex.join(args))
        proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell string
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            text=True,
            errors="replace",
            bufsize=1,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, kill)
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if output is not None:
                    output(line.rstrip("\n"))
            status = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if timed_out.is_set():
            raise CcloudvmError(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s")
        return status

    def put_file(self, local: Path, remote: str, *, mode: int = 0o644) -> None:
        target = Path(remote)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
        target.chmod(mode)

    def put_text(self, text: str, remote: str, *, mode: int = 0o644) -> None:
        target = Path(remote)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Create with the final mode so a script is never briefly readable by others.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        target.chmod(mode)
