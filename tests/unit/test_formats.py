"""Output formats: table, json, yaml, csv for `instances` (ls, list) and `status`; -q."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
import yaml

from ccloudvm.core import formats
from ccloudvm.core.errors import UsageError
from tests.unit.test_cli_errors import _make_instance, _one_line_error, ccloudvm

ROWS: list[dict[str, Any]] = [
    {"name": "dev", "cpus": 2, "pid": None, "ports": ["127.0.0.1:8080 -> 80", "127.0.0.1:2 -> 2"]},
    {"name": 'o"dd,name', "cpus": 1, "pid": 42, "ports": [], "extra": True},
]
COLUMNS: list[formats.Column] = [("NAME", lambda r: r["name"]), ("CPUS", lambda r: r["cpus"]),
                                 ("PORTS", lambda r: r["ports"])]  # fmt: skip


def test_json_keeps_types_and_sorts_keys() -> None:
    text = formats.render_list(ROWS, "json", COLUMNS)
    assert json.loads(text) == ROWS
    assert text.index('"cpus"') < text.index('"name"')


def test_yaml_keeps_types_and_field_order() -> None:
    text = formats.render_list(ROWS, "yaml", COLUMNS)
    assert yaml.safe_load(text) == ROWS
    assert text.startswith("- name: dev\n")


def test_csv_has_every_field_and_quotes_what_needs_it() -> None:
    text = formats.render_list(ROWS, "csv", COLUMNS)
    lines = text.splitlines()
    assert lines[0] == "name,cpus,pid,ports,extra"
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[0] == {"name": "dev", "cpus": "2", "pid": "", "extra": "",
                         "ports": "127.0.0.1:8080 -> 80; 127.0.0.1:2 -> 2"}  # fmt: skip
    assert parsed[1] == {
        "name": 'o"dd,name',
        "cpus": "1",
        "pid": "42",
        "ports": "",
        "extra": "true",
    }


def test_csv_of_nothing_is_empty() -> None:
    assert formats.to_csv([]) == ""


def test_table_aligns_columns_and_shows_missing_values_as_dash() -> None:
    text = formats.render_list(ROWS, "table", COLUMNS)
    assert text.splitlines() == [
        "NAME       CPUS  PORTS",
        "dev        2     127.0.0.1:8080 -> 80, 127.0.0.1:2 -> 2",
        'o"dd,name  1     -',
    ]


def test_a_newline_in_a_value_does_not_break_a_table_row() -> None:
    text = formats.to_table([{"name": "a\nb"}], [("NAME", lambda r: r["name"])])
    assert text == "NAME\na b\n"


def test_record_formats() -> None:
    record = {"name": "dev", "pid": None, "ports": ["a", "b"], "accel": ""}
    assert formats.render_record(record, "table") == (
        "name       dev\npid        -\nports      a, b\naccel      -\n"
    )
    assert json.loads(formats.render_record(record, "json")) == record
    assert yaml.safe_load(formats.render_record(record, "yaml")) == record
    assert formats.render_record(record, "csv") == "name,pid,ports,accel\ndev,,a; b,\n"


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="use one of table, json, yaml, csv"):
        formats.render_record({}, "xml")


@pytest.mark.parametrize(
    ("fmt", "as_json", "chosen"),
    [(None, False, "table"), (None, True, "json"), ("json", True, "json"), ("csv", False, "csv")],
)
def test_choose(fmt: str | None, as_json: bool, chosen: str) -> None:
    assert formats.choose(fmt, as_json) == chosen


def test_json_and_another_format_contradict() -> None:
    with pytest.raises(UsageError, match="--json and --format yaml contradict"):
        formats.choose("yaml", True)


# ------------------------------------------------------------------ the commands


@pytest.mark.parametrize("command", ["instances", "ls", "list"])
def test_instances_and_its_aliases(command: str) -> None:
    _make_instance("web")
    _make_instance("dev")
    result = ccloudvm(command)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = ["NAME", "STATE", "WORKLOAD", "IMAGE", "CPUS", "MEM", "SSH", "PORTS", "DRIVER"]
    assert lines[0].split() == header
    assert [line.split()[:2] for line in lines[1:]] == [["dev", "stopped"], ["web", "stopped"]]


@pytest.mark.parametrize(
    ("args", "load"),
    [(["--json"], json.loads), (["--format", "json"], json.loads),
     (["--format", "yaml"], yaml.safe_load),
     (["--format", "csv"], lambda text: list(csv.DictReader(io.StringIO(text))))],
)  # fmt: skip
def test_instances_formats(args: list[str], load: Any) -> None:
    _make_instance("dev")
    result = ccloudvm("ls", *args)
    assert result.returncode == 0, result.stderr
    rows = load(result.stdout)
    assert [(r["name"], r["state"], str(r["cpus"])) for r in rows] == [("dev", "stopped", "1")]


def test_instances_quiet_prints_names_only() -> None:
    _make_instance("web")
    _make_instance("dev")
    result = ccloudvm("instances", "-q")
    assert result.returncode == 0 and result.stdout == "dev\nweb\n", result.stderr
    assert ccloudvm("ls", "--quiet").stdout == "dev\nweb\n"


def test_instances_quiet_lists_a_damaged_instance_too() -> None:
    _make_instance("bad").state.write_text("{}\n")
    assert ccloudvm("instances", "-q").stdout == "bad\n"


def test_empty_lists() -> None:
    assert ccloudvm("instances", "--format", "yaml").stdout.strip() == "[]"
    assert ccloudvm("instances", "--format", "csv").stdout == ""
    assert ccloudvm("instances", "-q").stdout == ""
    table = ccloudvm("instances")
    assert table.returncode == 0 and table.stdout == "" and "no instances" in table.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--json", "--format", "csv"], "--json and --format csv contradict"),
     (["-q", "--format", "json"], "-q prints names only")],
)  # fmt: skip
def test_contradicting_flags(args: list[str], needle: str) -> None:
    _one_line_error(ccloudvm("instances", *args), 2, needle)


def test_an_unknown_format_names_the_choices() -> None:
    result = ccloudvm("instances", "--format", "xml")
    _one_line_error(result, 2, "'xml' is not one of", "table", "csv")


@pytest.mark.parametrize("fmt", ["table", "json", "yaml", "csv"])
def test_status_formats(fmt: str) -> None:
    _make_instance("dev")
    result = ccloudvm("status", "dev", "--format", fmt)
    assert result.returncode == 0, result.stderr
    if fmt == "table":
        assert "state      stopped" in result.stdout.splitlines()
        return
    if fmt == "csv":
        data: dict[str, Any] = next(csv.DictReader(io.StringIO(result.stdout)))
    else:
        data = (json.loads if fmt == "json" else yaml.safe_load)(result.stdout)
    assert data["name"] == "dev" and data["state"] == "stopped"


def test_status_json_alias_is_kept() -> None:
    _make_instance("dev")
    assert json.loads(ccloudvm("status", "dev", "--json").stdout)["mem_mib"] == 1024


def test_help_names_the_aliases_and_formats() -> None:
    text = ccloudvm("instances", "--help").stdout
    assert "aliases: ls, list" in text and "[table|json|yaml|csv]" in text and "-q" in text
    top = ccloudvm("--help").stdout
    assert "instances" in top and "  ls " not in top


def test_status_and_instances_show_every_forward_url_ready() -> None:
    """Issue 10 item 5: an instance created with ports shows each forward as
    ADDR:HOST -> GUEST in status (table and JSON) and instances, never `"ports": []`."""
    files = _make_instance("web")
    record = json.loads(files.state.read_text())
    record["ports"] = ["18480:8000", "127.0.0.5:9000:90"]
    files.state.write_text(json.dumps(record))
    shown = ["127.0.0.1:18480 -> 8000", "127.0.0.5:9000 -> 90"]
    assert json.loads(ccloudvm("status", "web", "--json").stdout)["ports"] == shown
    assert f"ports      {', '.join(shown)}" in ccloudvm("status", "web").stdout.splitlines()
    assert ", ".join(shown) in ccloudvm("instances").stdout
    assert json.loads(ccloudvm("instances", "--json").stdout)[0]["ports"] == shown
