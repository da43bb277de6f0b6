"""The top of the command line: how an interruption, a refusal at the prompt and --debug
reach the user (one line and an exit status; a traceback only when asked for)."""

from __future__ import annotations

import io

import pytest

from ccloudvm.cli import main as cli
from ccloudvm.core.errors import CreateInterrupted
from tests.unit.test_cli_errors import _make_instance, ccloudvm


class _Terminal(io.StringIO):
    """What the user types at a terminal."""

    def isatty(self) -> bool:
        return True


def _exit_status(*args: str) -> int | str | None:
    with pytest.raises(SystemExit) as exited:
        cli.main(list(args))
    return exited.value.code


@pytest.mark.parametrize(
    ("removed", "said"),
    [
        (True, "interrupted; removed the half-made instance dev"),
        (False, "interrupted; dev stays, not provisioned ('ccloudvm provision dev' runs"),
    ],
)
def test_an_interrupted_create_says_what_became_of_the_instance(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], removed: bool, said: str
) -> None:
    from ccloudvm.app import workflow

    def interrupted(*args: object) -> None:
        raise CreateInterrupted("dev", removed=removed, exit_code=130)

    monkeypatch.setattr(workflow, "create", interrupted)
    assert _exit_status("create", "debian", "--name", "dev") == 130
    err = capsys.readouterr().err
    assert said in err and "aborted" not in err and "Traceback" not in err


def test_no_at_the_prompt_aborts_and_keeps_every_instance(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [_make_instance("a"), _make_instance("b")]
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    assert _exit_status("delete", "--all") == 130
    captured = capsys.readouterr()
    assert "Delete 2 instance(s): a, b?" in captured.out
    assert captured.err.strip() == "aborted"
    assert all(f.state.exists() for f in files)


def test_yes_at_the_prompt_deletes_every_instance(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [_make_instance("a"), _make_instance("b")]
    monkeypatch.setattr("sys.stdin", _Terminal("y\n"))
    cli.main(["teardown"])
    assert not any(f.dir.exists() for f in files)
    assert "a deleted" in capsys.readouterr().err


def test_teardown_of_nothing_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["teardown", "--yes"])
    cli.main(["delete", "--all", "--yes"])
    assert capsys.readouterr().err == "no instances\nno instances\n"


def test_debug_shows_the_traceback_of_an_error() -> None:
    plain = ccloudvm("status", "ghost")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = ccloudvm("--debug", "status", "ghost")
    assert debug.returncode == 1, debug.stderr
    assert (
        "Traceback" in debug.stderr and "NotFoundError: no instance named 'ghost'" in debug.stderr
    )


def test_an_unforeseen_refusal_of_the_host_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ccloudvm.cli import errors
    from ccloudvm.state import instance_state

    monkeypatch.setattr(errors, "_debug", False)  # --debug below stays in this test

    def refused(state: object) -> list[str]:
        raise PermissionError(13, "Permission denied", "/somewhere/instances")

    monkeypatch.setattr(instance_state, "instance_names", refused)
    assert _exit_status("instances") == 1
    assert capsys.readouterr().err == (
        "error: Permission denied: /somewhere/instances (run with --debug for the details)\n"
    )
    with pytest.raises(PermissionError):
        cli.main(["--debug", "instances"])


def test_an_error_line_is_printed_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    """No markup, no emoji: ':b:' in a value stays ':b:'."""
    assert _exit_status("create", "debian", "--mount", "x:b:c") == 2
    assert capsys.readouterr().err == "error: invalid mount option 'c' in 'x:b:c' (use ro or rw)\n"


def test_an_error_is_red_at_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ccloudvm.cli import errors

    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    errors.print_error("it broke", "fix it")
    assert capsys.readouterr().err == "\x1b[31merror: it broke (fix it)\x1b[0m\n"
