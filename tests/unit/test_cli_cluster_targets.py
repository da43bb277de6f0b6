"""Which instance or workload a cluster command acts on, and its one-line refusals before
anything runs: no instance to pick, a workload without a cluster, a stopped VM."""

from __future__ import annotations

import json

import pytest

from ccloudvm.cli import main as cli
from tests.unit.test_cli_errors import _make_instance


def _refusal(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(list(args))
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return exited.value.code, err


@pytest.mark.parametrize(
    ("instances", "said"),
    [
        ([], "error: there are no instances (create one with 'ccloudvm create debian')"),
        (["a", "b"], "error: more than one instance exists; name one (names: a, b)"),
    ],
)
def test_without_a_name_there_must_be_exactly_one_instance(
    capsys: pytest.CaptureFixture[str], instances: list[str], said: str
) -> None:
    for name in instances:
        _make_instance(name)
    code, err = _refusal(capsys, "cluster", "verify")
    assert code == 2 and err.strip() == said


def test_an_instance_whose_workload_has_no_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    _make_instance("dev")  # a debian instance
    code, err = _refusal(capsys, "cluster", "setup")  # the only instance there is
    assert code == 2
    assert err.startswith("error: workload debian has no cluster section (cluster commands need")


def test_a_cluster_in_a_stopped_instance_says_how_to_start_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = _make_instance("dev")
    record = json.loads(files.state.read_text())
    files.state.write_text(json.dumps({**record, "workload": "ciao"}))
    code, err = _refusal(capsys, "cluster", "env", "dev")
    assert code == 1 and "'dev' is not running" in err and "ccloudvm start dev" in err


def test_baremetal_of_a_workload_without_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _refusal(capsys, "baremetal", "verify", "debian")
    assert code == 2 and err.startswith("error: workload debian has no cluster section")


def test_a_command_for_every_cluster_action_in_its_order() -> None:
    from ccloudvm.cli import cluster as cli_cluster
    from ccloudvm.cluster import network

    assert tuple(cli_cluster._ACTION_HELP) == network.ACTIONS
    assert list(cli_cluster.cluster_group.commands) == list(network.ACTIONS)
    assert set(network.ACTIONS) <= set(cli_cluster.baremetal_group.commands)
