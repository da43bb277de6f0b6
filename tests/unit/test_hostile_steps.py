"""Hostile input in provision steps and checks: names, copy destinations, env keys and
values are data. Each case runs the real step script through LocalTarget (real bash) and
checks that a canary command inside the text never ran and the value arrived unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ccloudvm.app.provision import run_checks, run_steps
from ccloudvm.core.errors import UsageError
from ccloudvm.remote.local import LocalTarget
from ccloudvm.workloads.definition import Check, ProvisionStep

# Ways a string could turn into shell code; each tries to create the canary file.
INJECTIONS = (
    "first\ntouch {canary}",
    "a'; touch {canary}; echo '",
    'a"; touch {canary}; echo "',
    "$(touch {canary})",
    "`touch {canary}`",
    "x; touch {canary}",
    "x && touch {canary}",
    "x\r\ntouch {canary}\n#",
)


def _cases(canary: Path) -> list[str]:
    return [text.format(canary=canary) for text in INJECTIONS]


@pytest.mark.parametrize("index", range(len(INJECTIONS)))
def test_a_step_name_never_becomes_script_text(tmp_path: Path, index: int) -> None:
    canary = tmp_path / "pwned"
    name = _cases(canary)[index]
    log: list[str] = []
    run_steps(LocalTarget(), [ProvisionStep(name=name, script="true\n")], log=log.append)
    assert not canary.exists()
    assert log[0].endswith(name)  # the log keeps the name as it was written


@pytest.mark.parametrize("index", range(len(INJECTIONS)))
def test_a_check_name_never_becomes_script_text(tmp_path: Path, index: int) -> None:
    canary = tmp_path / "pwned"
    assert run_checks(LocalTarget(), [Check(name=_cases(canary)[index], run="true\n")]) == (1, 0)
    assert not canary.exists()


@pytest.mark.parametrize("index", range(len(INJECTIONS)))
def test_an_env_value_arrives_unchanged_and_runs_nothing(tmp_path: Path, index: int) -> None:
    canary = tmp_path / "pwned"
    value = _cases(canary)[index]
    out = tmp_path / "out"
    step = ProvisionStep(
        name="env", script=f'printf %s "$HOSTILE" > {out}\n', env=(("HOSTILE", value),)
    )
    run_steps(LocalTarget(), [step], env={"ALSO": value})
    assert not canary.exists()
    assert out.read_bytes().decode() == value  # bytes: read_text would fold \r\n


@pytest.mark.parametrize("index", range(len(INJECTIONS)))
def test_an_env_name_that_is_not_an_identifier_is_refused(tmp_path: Path, index: int) -> None:
    canary = tmp_path / "pwned"
    key = _cases(canary)[index]
    step = ProvisionStep(name="env", script="true\n", env=((key, "v"),))
    with pytest.raises(UsageError, match="environment variable name .* is not valid"):
        run_steps(LocalTarget(), [step])
    with pytest.raises(UsageError, match="is not valid"):
        run_steps(LocalTarget(), [ProvisionStep(name="s", script="true\n")], env={key: "v"})
    assert not canary.exists()


@pytest.mark.parametrize(
    "dest_name",
    ["with space", "q'uote", 'd"q', "$(touch PWN)", "`touch PWN`", "a;touch PWN", "n\nl"],
)
def test_a_copy_destination_is_one_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dest_name: str
) -> None:
    home = tmp_path / "home"  # steps start in $HOME, where `touch PWN` would land
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    src = tmp_path / "src"
    src.write_text("payload")
    folder = tmp_path / "dest"
    dest = folder / dest_name
    step = ProvisionStep(name="copy", copy_src=src, copy_dest=str(dest), copy_mode=0o600)
    run_steps(LocalTarget(), [step])
    assert list(home.iterdir()) == []
    assert dest.read_text() == "payload"
    assert [p.name for p in folder.iterdir()] == [dest.name]
