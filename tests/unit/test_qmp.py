"""ccloudvm.vm.qmp against a fake QEMU monitor that speaks the real QMP wire protocol."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ccloudvm.core.errors import CcloudvmError
from ccloudvm.vm import qmp

GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2"},
        "capabilities": ["oob"],
    }
}


@dataclass(frozen=True)
class Refuse:
    """An error reply of the fake monitor to a command, as QEMU's GenericError."""

    desc: str


class FakeMonitor:
    """A QMP server on a unix socket: greeting, qmp_capabilities, then commands.

    Like QEMU, it refuses commands before capabilities are negotiated, answers each
    command with the id it came with, and closes the connection after `quit`.
    """

    def __init__(
        self,
        path: Path,
        status: str = "running",
        answer_quit: bool = True,
        answers: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        # Further commands and their "return" value; an `Refuse` value is an error reply.
        self.answers = answers or {}
        self.status = status
        self.answer_quit = answer_quit
        self.commands: list[str] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(10)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        send = lambda msg: conn.sendall(json.dumps(msg).encode() + b"\r\n")  # noqa: E731
        send(GREETING)
        decoder = json.JSONDecoder()
        buffer = ""
        negotiated = False
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data.decode()
            while buffer.strip():
                try:
                    msg, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break  # an incomplete message: read more
                buffer = buffer.lstrip()[end:]
                command = msg["execute"]
                reply: dict[str, Any] = {}
                if "id" in msg:
                    reply["id"] = msg["id"]
                if command == "qmp_capabilities":
                    negotiated = True
                    send({"return": {}, **reply})
                    continue
                self.commands.append(command)
                if not negotiated:
                    send({"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, **reply})  # fmt: skip
                elif command == "query-status":
                    send({"return": {"status": self.status, "running": self.status == "running", "singlestep": False}, **reply})  # fmt: skip
                elif command == "system_powerdown":
                    send({"return": {}, **reply})
                    send({"event": "POWERDOWN", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}})  # fmt: skip
                elif command in self.answers:
                    answer = self.answers[command]
                    if isinstance(answer, Refuse):
                        send({"error": {"class": "GenericError", "desc": answer.desc}, **reply})
                    else:
                        send({"return": answer, **reply})
                elif command == "quit":
                    if self.answer_quit:
                        send({"return": {}, **reply})
                    return  # QEMU exits: the connection closes
                else:
                    send({"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}, **reply})  # fmt: skip


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[FakeMonitor]:
    fake = FakeMonitor(tmp_path / "qmp.sock")
    yield fake
    fake.close()


def test_execute_negotiates_and_returns_the_result(monitor: FakeMonitor) -> None:
    result = qmp.execute(monitor.path, "query-status")
    assert result == {"status": "running", "running": True, "singlestep": False}
    assert monitor.commands == ["query-status"]


@pytest.mark.parametrize("status", ["running", "paused", "shutdown"])
def test_query_status_is_what_qemu_reports(tmp_path: Path, status: str) -> None:
    fake = FakeMonitor(tmp_path / "qmp.sock", status=status)
    try:
        assert qmp.query_status(fake.path) == status
    finally:
        fake.close()


def test_system_powerdown_reaches_qemu(monitor: FakeMonitor) -> None:
    qmp.system_powerdown(monitor.path)
    assert monitor.commands == ["system_powerdown"]


@pytest.mark.parametrize("answered", [True, False])
def test_quit_succeeds_whether_or_not_qemu_answers_before_exiting(
    tmp_path: Path, answered: bool
) -> None:
    fake = FakeMonitor(tmp_path / "qmp.sock", answer_quit=answered)
    try:
        qmp.quit(fake.path)
        assert fake.commands == ["quit"]
    finally:
        fake.close()


def test_a_command_qemu_refuses_is_reported_with_its_reason(monitor: FakeMonitor) -> None:
    with pytest.raises(qmp.QMPUnavailable, match="no-such-command") as info:
        qmp.execute(monitor.path, "no-such-command")
    assert "has not been found" in str(info.value)


def test_a_missing_socket_is_unavailable_and_named(tmp_path: Path) -> None:
    missing = tmp_path / "qmp.sock"
    with pytest.raises(qmp.QMPUnavailable, match=str(missing)):
        qmp.query_status(missing)


def test_a_silent_monitor_times_out(tmp_path: Path) -> None:
    # A socket that accepts connections but never greets, as a hung QEMU's would.
    path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(path))
        silent.listen()
        with pytest.raises(qmp.QMPUnavailable, match=str(path)):
            qmp.execute(path, "query-status", timeout=0.5)


def test_the_library_adds_no_log_lines_of_its_own_unless_debugging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The user sees QMPUnavailable's one line, not also qemu.qmp's "Failed to establish".
    caplog.set_level(logging.WARNING)
    with pytest.raises(qmp.QMPUnavailable):
        qmp.query_status(tmp_path / "qmp.sock")
    assert caplog.records == []
    caplog.set_level(logging.DEBUG)
    with pytest.raises(qmp.QMPUnavailable):
        qmp.query_status(tmp_path / "qmp.sock")
    assert any("Failed to establish connection" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("answered", [True, False])
def test_a_conversation_ending_in_quit_keeps_its_result(tmp_path: Path, answered: bool) -> None:
    # A warm-boot save ends with "quit"; QEMU closing the socket must not turn the saved
    # snapshot into a failure with an empty reason (issue 10, item 3).
    from qemu.qmp import ExecInterruptedError

    fake = FakeMonitor(tmp_path / "qmp.sock", answer_quit=answered)

    async def save_then_quit(client: Any) -> str:
        await client.execute("query-status")
        with contextlib.suppress(ExecInterruptedError):
            await client.execute("quit")
        return "saved"

    try:
        assert qmp.converse(fake.path, save_then_quit) == "saved"
    finally:
        fake.close()


def test_an_error_without_a_message_still_names_itself(monitor: FakeMonitor) -> None:
    async def fails_silently(client: Any) -> None:
        raise EOFError

    with pytest.raises(qmp.QMPUnavailable, match="failed: EOFError$"):
        qmp.converse(monitor.path, fails_silently, what="warm boot")


class _Failed(CcloudvmError):
    pass


def _wait(fake: FakeMonitor, timeout: float = 5.0) -> None:
    async def conversation(client: Any) -> None:
        await qmp.wait_migration(client, what="saving the state", timeout=timeout, error=_Failed)

    try:
        qmp.converse(fake.path, conversation)
    finally:
        fake.close()


def test_wait_migration_returns_when_the_migration_completed(tmp_path: Path) -> None:
    fake = FakeMonitor(tmp_path / "qmp.sock", answers={"query-migrate": {"status": "completed"}})
    _wait(fake)
    assert fake.commands == ["query-migrate"]


def test_a_failed_migration_says_qemus_reason(tmp_path: Path) -> None:
    failed = {"status": "failed", "error-desc": "No space left on device"}
    fake = FakeMonitor(tmp_path / "qmp.sock", answers={"query-migrate": failed})
    with pytest.raises(_Failed, match="^saving the state failed: No space left on device$"):
        _wait(fake)


def test_a_migration_that_does_not_finish_is_cancelled(tmp_path: Path) -> None:
    answers = {"query-migrate": {"status": "active"}, "migrate_cancel": {}}
    fake = FakeMonitor(tmp_path / "qmp.sock", answers=answers)
    with pytest.raises(_Failed, match="^saving the state did not finish in 0 s$"):
        _wait(fake, timeout=0.2)
    assert fake.commands[-1] == "migrate_cancel" and set(fake.commands[:-1]) == {"query-migrate"}
