"""A small synchronous face on qemu.qmp's QMP client, with timeouts on every call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient

from ccloudvm.core.errors import CcloudvmError

_log = logging.getLogger(__name__)


class _OnlyWhenDebugging(logging.Filter):
    """qemu.qmp logs a failed connection as an error of its own; ccloudvm reports it once,
    as QMPUnavailable, so the library's lines are shown only under --debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_log.addFilter(_OnlyWhenDebugging())


class QMPUnavailable(CcloudvmError):
    """QEMU's monitor socket is missing or does not answer."""


def converse(
    socket: Path,
    conversation: Callable[[QMPClient], Awaitable[Any]],
    timeout: float = 5.0,
    what: str = "QMP",
) -> Any:
    """Connect to the monitor at `socket`, run `conversation` with the client (each of the
    two within `timeout`), disconnect; return what the conversation returned."""

    async def talk() -> Any:
        client = QMPClient("ccloudvm")
        client.logger = _log
        try:
            await asyncio.wait_for(client.connect(str(socket)), timeout)
            return await asyncio.wait_for(conversation(client), timeout)
        finally:
            # qemu.qmp's disconnect re-raises what ended the connection: after "quit",
            # QEMU closing the socket (an EOFError with no message). The conversation's
            # own outcome is what counts, so that is only logged.
            try:
                await client.disconnect()
            except Exception as exc:  # noqa: BLE001 - see above
                _log.debug("QMP disconnect from %s: %r", socket, exc)

    try:
        return asyncio.run(talk())
    except CcloudvmError:
        raise  # the conversation's own verdict
    except (TimeoutError, OSError, ConnectionError, ConnectError) as exc:
        raise QMPUnavailable(
            f"QEMU's monitor at {socket} did not answer: {_describe(exc)}"
        ) from exc
    except Exception as exc:  # qemu.qmp raises its own ExecuteError and state errors
        raise QMPUnavailable(f"{what} failed: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """Never an empty reason: some of qemu.qmp's errors carry no message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def execute(
    socket: Path, command: str, args: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """Run one QMP command on the monitor at `socket` and return its result."""
    return converse(
        socket, lambda client: client.execute(command, args), timeout, f"QMP command {command}"
    )


def query_status(socket: Path) -> str:
    """The guest's run state as QEMU reports it: running, paused, shutdown, ..."""
    result = execute(socket, "query-status")
    return str(result.get("status", "unknown"))


def system_powerdown(socket: Path) -> None:
    execute(socket, "system_powerdown")


def quit(socket: Path) -> None:  # noqa: A001 - QMP's own name for it
    # QEMU closes the socket as it exits; a lost answer to "quit" is success.
    with contextlib.suppress(QMPUnavailable):
        execute(socket, "quit")


async def wait_migration(
    client: QMPClient,
    *,
    what: str,
    timeout: float,
    error: type[CcloudvmError] = CcloudvmError,
) -> None:
    """Wait until the migration QEMU runs (a state saved to a file, or loaded from one)
    completes; `error` says "`what` failed: QEMU's reason", or that it did not finish in
    `timeout` (then it is cancelled)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await client.execute("query-migrate")
        info: dict[str, Any] = reply if isinstance(reply, dict) else {}
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise error(f"{what} failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                await client.execute("migrate_cancel")
            raise error(f"{what} did not finish in {timeout:.0f} s")
        await asyncio.sleep(0.05)
