"""How lists and records are printed for people and scripts: table, json, yaml or csv.

A list is rows of dicts (`instances`), a record is one dict (`status`). JSON and YAML keep
every field with its type; CSV has one column per field, a list's items joined by "; "
and a missing value empty; a table shows chosen columns as aligned plain text, a missing
value as "-". Plain text, not rich: `instances` must start fast (issue 10).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

FORMATS = ("table", "json", "yaml", "csv")
LIST_SEPARATOR = "; "

Column = tuple[str, Callable[[Mapping[str, Any]], Any]]


def to_json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def to_yaml(data: Any) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True))


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return LIST_SEPARATOR.join(_csv_cell(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """A header of every field (in the order first seen), then one line per row."""
    import csv
    import io

    fields: dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    if not fields:
        return ""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow(_csv_cell(row.get(name)) for name in fields)
    return out.getvalue()


def text_cell(value: Any) -> str:
    """A value as a table shows it: '-' for nothing, a list comma-separated."""
    if value is None or value == "":
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return str(value).replace("\n", " ")


def to_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Aligned columns under upper-case headers, two spaces apart; no trailing blanks."""
    cells = [[header for header, _ in columns]]
    cells += [[text_cell(value(row)) for _, value in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    return "\n".join(lines) + "\n"


def record_table(record: Mapping[str, Any]) -> str:
    """One record as 'key  value' lines."""
    width = max((len(key) for key in record), default=0)
    width = max(width, 10)
    return "".join(f"{key:{width}} {text_cell(value)}\n" for key, value in record.items())


def render_list(rows: Sequence[Mapping[str, Any]], fmt: str, columns: Sequence[Column]) -> str:
    if fmt == "table":
        return to_table(rows, columns)
    return _render_data(list(rows), fmt)


def render_record(record: Mapping[str, Any], fmt: str) -> str:
    if fmt == "table":
        return record_table(record)
    return _render_data(dict(record), fmt)


def _render_data(data: list[Any] | dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return to_json(data)
    if fmt == "yaml":
        return to_yaml(data)
    if fmt == "csv":
        return to_csv(data if isinstance(data, list) else [data])
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def choose(fmt: str | None, as_json: bool) -> str:
    """The format from --format and its alias --json (which may not contradict it)."""
    from ccloudvm.core.errors import UsageError

    if as_json and fmt not in (None, "json"):
        raise UsageError(f"--json and --format {fmt} contradict each other", hint="give one")
    return "json" if as_json else (fmt or "table")
