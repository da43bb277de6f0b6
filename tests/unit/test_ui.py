"""What the user reads: text shown as it is, and boot stages as lines without a terminal."""

from __future__ import annotations

import pytest

from ccloudvm.core import ui


def test_messages_are_shown_as_they_are_never_as_markup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ui.warn("cannot read /tmp/[bold]x[/bold]")
    ui.info("guest said [red]hello")
    with ui.step("copying [b]"):
        pass
    err = capsys.readouterr().err
    assert "/tmp/[bold]x[/bold]" in err and "guest said [red]hello" in err
    assert "copying [b] ... OK" in err


def test_without_a_terminal_each_new_boot_stage_is_a_line_with_its_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with ui.spinner("Booting dev", stage_lines=True) as status:
        for stage in ("init-local", "init-local", "modules:final"):
            status.update(stage)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "Booting dev ..."
    assert [line.split(" (+")[0] for line in lines[1:]] == ["  init-local", "  modules:final"]
    assert all(line.endswith(" s)") for line in lines[1:])


def test_other_spinners_stay_quiet_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with ui.spinner("Running step") as status:
        status.update("output line 1")
    assert capsys.readouterr().err == ""
