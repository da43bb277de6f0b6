"""`ccloudvm workloads`, `workload show|schema`, `provision` and `verify`, run in-process
through the real entry point with a temporary CCLOUDVM_HOME: what a user reads and the
exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccloudvm.cli.main import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "state"
    monkeypatch.setenv("CCLOUDVM_HOME", str(root))
    return root


def _run(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _mine(home: Path, name: str, body: str) -> Path:
    folder = home / "workloads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(body)
    return path


def test_workloads_json_lists_yours_first_and_marks_a_bundled_one_overridden(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = _mine(home, "debian", "description: my own debian\ninherits: debian\n")
    assert _run("workloads", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"name": "debian", "description": "my own debian", "origin": str(mine)}
    bundled = [r for r in rows[1:] if r["name"] == "debian"]
    assert len(bundled) == 1
    assert bundled[0]["description"].startswith(f"(overridden by your {mine})")
    assert {r["name"] for r in rows} >= {"debian", "ubuntu"}


def test_workloads_table_shows_name_description_and_origin(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = _mine(home, "aaa-tools", "description: tools [for] me\n")
    _mine(home, "broken", "description: [unclosed\n")
    assert _run("workloads") == 0
    lines = capsys.readouterr().out.splitlines()
    first = lines[0].split()
    assert first[0] == "aaa-tools" and "tools [for] me" in lines[0]  # markup is escaped
    assert f"({mine})" in lines[0]
    broken = next(line for line in lines if line.startswith("broken"))
    assert "(unreadable: run 'ccloudvm workload show' for the error)" in broken


def test_workload_schema_is_the_json_schema(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("workload", "schema") == 0
    schema = json.loads(capsys.readouterr().out)
    assert "properties" in schema and "image" in schema["properties"]


def test_workload_show_renders_for_the_given_name(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mine(home, "hello", "image: debian-12\ndescription: hi\n")
    assert _run("workload", "show", "hello", "--name", "box") == 0
    out = capsys.readouterr().out
    assert "debian-12" in out and "hi" in out


def test_workload_show_of_an_unknown_name_suggests_one(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("workload", "show", "debain") == 2
    err = capsys.readouterr().err
    assert "no workload named 'debain'" in err and "did you mean 'debian'?" in err


@pytest.mark.parametrize("command", ["provision", "verify"])
def test_provision_and_verify_of_a_missing_instance_say_so(
    home: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert _run(command, "ghost") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ghost" in err[0], err
    assert "Traceback" not in "\n".join(err)
