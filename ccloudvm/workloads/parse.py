"""Parsing and validating one workload file, with the line of every value."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ccloudvm.core.errors import UsageError
from ccloudvm.workloads.sources import WorkloadSource

CLUSTER_SCRIPTS = ("setup", "verify", "bat", "cleanup", "env")


class _Doc:
    """One parsed workload file: its data and the line of every value, for messages."""

    def __init__(self, src: WorkloadSource) -> None:
        self.src = src
        self.lines: dict[tuple[str | int, ...], int] = {}
        loader = yaml.SafeLoader(src.text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise UsageError(
                f"{src.origin}{line}: malformed YAML: {exc.problem or exc.context}"
            ) from exc
        except yaml.YAMLError as exc:
            raise UsageError(f"{src.origin}: malformed YAML: {exc}") from exc
        finally:
            loader.dispose()
        if node is not None:
            self._index(node, ())
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UsageError(f"{src.origin}: a workload file must be a YAML mapping of fields")
        self.data: dict[str, Any] = data

    def _index(self, node: yaml.Node, path: tuple[str | int, ...]) -> None:
        # Block scalars (| and >) start on the line after their indicator.
        block = isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")
        self.lines[path] = node.start_mark.line + (2 if block else 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self._index(value, (*path, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._index(item, (*path, index))

    def where(self, path: tuple[str | int, ...]) -> str:
        line = None
        probe = path
        while line is None and probe:
            line = self.lines.get(probe)
            probe = probe[:-1]
        dotted = _dotted(path)
        at = f" line {line}" if line is not None else ""
        return f"{self.src.origin}{at}: {dotted}" if dotted else f"{self.src.origin}{at}"

    def line(self, path: tuple[str | int, ...]) -> int | None:
        return self.lines.get(path)


def _dotted(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


_Types = type | tuple[type, ...]

TOP: dict[str, _Types] = {
    "description": str,
    "inherits": (str, list),
    "image": str,
    "needs_nested_vm": bool,
    "vm": dict,
    "vars": dict,
    "user_data": (str, dict),
    "ca_certs": list,
    "provision": list,
    "checks": list,
    "cluster": dict,
}
VM: dict[str, _Types] = {
    "mem": (int, str),
    "cpus": int,
    "disk": (int, str),
    "ports": list,
    "mounts": list,
    "drives": list,
}
MOUNT: dict[str, _Types] = {
    "host": str,
    "guest": str,
    "tag": str,
    "security_model": str,
    "readonly": bool,
}
DRIVE: dict[str, _Types] = {"path": str, "format": str, "options": str}
STEP: dict[str, _Types] = {
    "name": str,
    "run": str,
    "script": str,
    "copy": dict,
    "sudo": bool,
    "env": dict,
    "only": str,
}
COPY: dict[str, _Types] = {"src": str, "dest": str, "mode": (str, int)}
CHECK: dict[str, _Types] = {"name": str, "run": str, "script": str, "sudo": bool}
CLUSTER: dict[str, _Types] = {"network": dict, **{name: str for name in CLUSTER_SCRIPTS}}

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "a mapping"}
_TYPE_NAMES[list] = "a list"


def _type_ok(value: Any, types: _Types) -> bool:
    kinds = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # YAML true is not the integer 1 here
    return isinstance(value, kinds)


def _type_text(types: _Types) -> str:
    kinds = types if isinstance(types, tuple) else (types,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def _check_map(
    doc: _Doc,
    value: Any,
    schema: Mapping[str, _Types],
    path: tuple[str | int, ...],
    required: Sequence[str] = (),
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{doc.where(path)} must be a mapping")
    for key, item in value.items():
        key_text = str(key)
        if key_text not in schema:
            close = difflib.get_close_matches(key_text, list(schema), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(schema)
            raise UsageError(f"{doc.where((*path, key_text))}: unknown field {key_text!r}", hint)
        if item is not None and not _type_ok(item, schema[key_text]):
            raise UsageError(
                f"{doc.where((*path, key_text))} must be {_type_text(schema[key_text])}, "
                f"not {item!r}"
            )
    for key in required:
        if value.get(key) is None:
            raise UsageError(f"{doc.where(path)}: field {key!r} is missing")
    return value


def _validate(doc: _Doc) -> None:  # noqa: C901
    data = _check_map(doc, doc.data, TOP, ())
    if isinstance(data.get("inherits"), list):
        for index, parent in enumerate(data["inherits"]):
            if not isinstance(parent, str) or not parent:
                raise UsageError(
                    f"{doc.where(('inherits', index))} must be a workload name, path or URL, "
                    f"not {parent!r}"
                )
    vm = data.get("vm") or {}
    _check_map(doc, vm, VM, ("vm",))
    for key, schema in (("mounts", MOUNT), ("drives", DRIVE)):
        for index, item in enumerate(vm.get(key) or []):
            required = ("host", "guest") if key == "mounts" else ("path",)
            _check_map(doc, item, schema, ("vm", key, index), required)
    for index, port in enumerate(vm.get("ports") or []):
        if not _type_ok(port, (int, str)):
            raise UsageError(f"{doc.where(('vm', 'ports', index))} must be like '8080:80'")
    for index, step in enumerate(data.get("provision") or []):
        path: tuple[str | int, ...] = ("provision", index)
        _check_map(doc, step, STEP, path, ("name",))
        actions = [k for k in ("run", "script", "copy") if step.get(k) is not None]
        if len(actions) != 1:
            raise UsageError(f"{doc.where(path)}: a step needs exactly one of run, script, copy")
        if step.get("copy") is not None:
            _check_map(doc, step["copy"], COPY, (*path, "copy"), ("src", "dest"))
        if step.get("only") not in (None, "vm", "host"):
            raise UsageError(f"{doc.where((*path, 'only'))} must be vm or host")
    for index, check in enumerate(data.get("checks") or []):
        path = ("checks", index)
        _check_map(doc, check, CHECK, path, ("name",))
        if (check.get("run") is None) == (check.get("script") is None):
            raise UsageError(f"{doc.where(path)}: a check needs exactly one of run, script")
    _check_map(doc, data.get("cluster") or {}, CLUSTER, ("cluster",))
    for index, cert in enumerate(data.get("ca_certs") or []):
        if not isinstance(cert, str):
            raise UsageError(f"{doc.where(('ca_certs', index))} must be a PEM text or a path")
