"""Saved records (state.json) read back into the dataclasses that declare them.

The dataclass is the one declaration: its fields and their (resolved) annotations say
what the JSON must hold, and `problems` checks a record against them, every problem at
once. No pydantic here on purpose: `ccloudvm instances` reads every state.json, and
importing pydantic and building the model (~190 ms measured) would cost more than the
whole command line's start-up (~140 ms).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar, Union

T = TypeVar("T")


def problems(raw: object, cls: type, prefix: str = "") -> list[str]:
    """What is wrong with `raw` as the saved form of dataclass `cls`."""
    if not isinstance(raw, dict):
        return [f"{prefix.rstrip('.') or 'the file'} is not a JSON object"]
    found = [f"unknown field {prefix}{name}" for name in sorted(set(raw) - set(_hints(cls)))]
    for spec in dataclasses.fields(cls):
        if spec.name not in raw:
            required = spec.default is dataclasses.MISSING
            if required and spec.default_factory is dataclasses.MISSING:
                found.append(f"no field {prefix}{spec.name}")
            continue
        annotation = _hints(cls)[spec.name]
        value = raw[spec.name]
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            found.extend(problems(value, typing.cast(type, annotation), f"{prefix}{spec.name}."))
        elif not _fits(value, annotation):
            found.append(
                f"field {prefix}{spec.name} is {json.dumps(value)[:40]}, not {_name(annotation)}"
            )
    return found


def from_record(raw: dict[str, Any], cls: type[T]) -> T:
    """The dataclass `cls` from a record `problems` found nothing wrong with."""
    values = {}
    for name, value in raw.items():
        annotation = _hints(cls)[name]
        if dataclasses.is_dataclass(annotation):
            value = from_record(value, typing.cast(type, annotation))
        values[name] = value
    return cls(**values)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # tens of microseconds: not worth a cache


def _fits(value: Any, annotation: Any) -> bool:
    """Whether JSON `value` is what `annotation` asks for."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(item, args[1]) for item in value.values())
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(value, bool) and annotation is not bool:
        return False  # JSON true is not the integer 1 here
    return isinstance(annotation, type) and isinstance(value, annotation)


def _name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
