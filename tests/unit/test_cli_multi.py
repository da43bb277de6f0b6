"""delete, stop, start, quit on several names and --all: a failure on one does not stop the
others, one line per failure, a non-zero exit status if any failed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_cli_errors import _make_instance, _one_line_error, ccloudvm


def _instances() -> list[str]:
    folder = Path(os.environ["CCLOUDVM_HOME"]) / "instances"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("command", ["stop", "quit"])
def test_several_names_each_acted_on(command: str) -> None:
    _make_instance("a")
    _make_instance("b")
    result = ccloudvm(command, "a", "b")
    assert result.returncode == 0, result.stderr
    assert "a " in result.stderr and "b " in result.stderr and not _errors(result.stderr)


@pytest.mark.parametrize("command", ["stop", "quit", "delete"])
def test_a_missing_name_does_not_stop_the_others(command: str) -> None:
    _make_instance("a")
    _make_instance("b")
    result = ccloudvm(command, "a", "ghost", "b", "ghost2")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert _errors(result.stderr) == [
        "error: no instance named 'ghost' ('ccloudvm instances' lists them)",
        "error: no instance named 'ghost2' ('ccloudvm instances' lists them)",
    ]
    lines = result.stderr.splitlines()
    assert lines[0].startswith("a ") and lines[2].startswith("b "), result.stderr
    if command == "delete":
        assert _instances() == []


def test_failures_of_different_kinds_exit_1() -> None:
    _make_instance("a")
    _make_instance("bad").state.write_text("{}\n")  # damaged: a StateError (1), ghost: 2
    result = ccloudvm("stop", "ghost", "bad", "a")
    assert result.returncode == 1, result.stderr
    errors = _errors(result.stderr)
    assert len(errors) == 2 and "'ghost'" in errors[0] and "bad" in errors[1]
    assert "a is already stopped" in result.stderr


def test_each_names_the_instance_when_its_error_does_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ccloudvm.cli import targets
    from ccloudvm.core.errors import CcloudvmError, StateError

    done = []

    def action(name: str) -> None:
        if name == "b":
            raise StateError("the lock is held", hint="wait")
        if name == "c":
            raise CcloudvmError("'c' is busy")
        if name == "d":
            raise PermissionError(13, "Permission denied", "/x/d")
        done.append(name)

    with pytest.raises(SystemExit) as exited:
        targets.each(["a", "b", "c", "d", "e"], action)
    assert exited.value.code == 1 and done == ["a", "e"]
    assert capsys.readouterr().err.splitlines() == [
        "error: b: the lock is held (wait)",
        "error: 'c' is busy",
        "error: d: Permission denied: /x/d",
    ]


def test_a_name_given_twice_is_acted_on_once() -> None:
    _make_instance("a")
    result = ccloudvm("delete", "a", "a")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("a deleted") == 1


@pytest.mark.parametrize("command", ["stop", "quit"])
def test_all(command: str) -> None:
    for name in ("a", "b", "c"):
        _make_instance(name)
    result = ccloudvm(command, "--all")
    assert result.returncode == 0, result.stderr
    for name in ("a", "b", "c"):
        assert f"{name} " in result.stderr


@pytest.mark.parametrize("command", ["start", "stop", "quit", "delete"])
def test_all_without_instances_is_quiet_and_successful(command: str) -> None:
    result = (
        ccloudvm(command, "--all", "--yes") if command == "delete" else ccloudvm(command, "--all")
    )
    assert result.returncode == 0, result.stderr
    assert not _errors(result.stderr)


@pytest.mark.parametrize("command", ["start", "stop", "quit", "delete"])
def test_names_and_all_together_are_refused(command: str) -> None:
    _make_instance("a")
    _one_line_error(ccloudvm(command, "a", "--all"), 2, "give instance names or --all, not both")
    assert _instances() == ["a"]


def test_delete_all_needs_yes_without_a_terminal() -> None:
    _make_instance("a")
    _make_instance("b")
    result = ccloudvm("delete", "--all")
    _one_line_error(result, 2, "delete --all would delete 2 instance(s): a, b", "add --yes")
    assert _instances() == ["a", "b"]
    result = ccloudvm("delete", "--all", "--yes")
    assert result.returncode == 0, result.stderr
    assert _instances() == [] and "a deleted" in result.stderr and "b deleted" in result.stderr


def test_delete_needs_a_name() -> None:
    _make_instance("a")
    _one_line_error(ccloudvm("delete"), 2, "name the instance(s) to act on, or give --all")
    assert _instances() == ["a"]


def test_stop_without_a_name_picks_the_only_instance_or_asks_for_one() -> None:
    _make_instance("a")
    assert "a is already stopped" in ccloudvm("stop").stderr
    _make_instance("b")
    _one_line_error(ccloudvm("stop"), 2, "more than one instance exists; name one")


def test_teardown_deletes_every_instance() -> None:
    _make_instance("a")
    _make_instance("b")
    result = ccloudvm("teardown", "--yes")
    assert result.returncode == 0, result.stderr
    assert _instances() == []


@pytest.mark.parametrize("command", ["start", "stop", "quit", "delete"])
def test_help_says_names_and_all(command: str) -> None:
    text = ccloudvm(command, "--help").stdout
    assert "[NAME]..." in text and "--all" in text
