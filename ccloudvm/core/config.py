"""Configuration files as pydantic models: YAML with line numbers in, every problem out.

Each configuration shape (a workload, an image definition, a build recipe, the cluster
network) is declared once, as a pydantic model that forbids unknown fields and takes no
type coercions (`Strict`). `YamlDoc` parses a file keeping the line of every value;
`check` validates it and turns a pydantic ValidationError into one line per problem:

    FILE line N: dotted.path: what is wrong (hint)

all of them at once, with "did you mean X?" for a misspelt field. Validators raise
`problem(message, hint)` for messages of their own. Imported only by the commands that
read such files: pydantic stays off the start-up path.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from ccloudvm.core.errors import UsageError

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

# pydantic error type -> what a value of the wrong type should have been.
_KINDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "float_type": "a number",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


class Strict(BaseModel):
    """The base of every configuration model: unknown fields and coercions are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def problem(message: str, hint: str | None = None, at: Path_ = ()) -> PydanticCustomError:
    """An error for a validator to raise: `message` as the user reads it ("must ..." reads
    on from the field's path), `hint` what to do, `at` a path below the field."""
    return PydanticCustomError(
        "ccloudvm", "{message}", {"message": message, "hint": hint, "at": at}
    )


def one_of(
    kinds: Sequence[type],
    text: str,
    check: Callable[[Any], Any] | None = None,
    json_type: Any = None,
) -> Any:
    """A field that takes a value of one of `kinds` ("a string or a list"): an annotation
    for `Annotated[T, one_of(...)]`, one message instead of one per union member; `check`
    may look further and return the value to keep; `json_type` is the type the JSON
    Schema shows (default: the union of `kinds`)."""

    def validate(value: Any) -> Any:
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, tuple(kinds)):
            raise problem(f"must be {text}, not {_short(value)}")
        return check(value) if check is not None else value

    shown = Union[tuple(kinds)] if json_type is None else json_type  # noqa: UP007 - built at run time
    return PlainValidator(validate, json_schema_input_type=shown)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a file, at `path` (field names and list indexes)."""

    path: Path_
    line: int | None
    message: str
    hint: str | None = None

    def text(self, origin: str, *, hint: bool = True) -> str:
        head = location(origin, self.line, self.path)
        if not head:
            text = self.message
        elif self.path and self.message.startswith("must "):
            text = f"{head} {self.message}"  # "vm.cpus must be an integer"
        else:
            text = f"{head}: {self.message}"
        return f"{text} ({self.hint})" if hint and self.hint else text


def location(origin: str, line: int | None, path: Path_) -> str:
    """'FILE line N: dotted.path', as much of it as is known."""
    head = origin + (f" line {line}" if line is not None else "")
    dotted = dotted_path(path)
    return f"{head}: {dotted}" if head and dotted else head or dotted


class ConfigError(UsageError):
    """Every problem of one file: one line each, the hints inline when there are several
    (`hint` then goes only with a lone problem that has none of its own)."""

    def __init__(self, origin: str, problems: Sequence[Problem], hint: str | None = None) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            only = self.problems[0]
            super().__init__(only.text(origin, hint=False), only.hint or hint)
        else:
            super().__init__("\n".join(p.text(origin) for p in self.problems))


def dotted_path(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class YamlDoc:
    """One parsed YAML file: its data, and the line of every value for messages."""

    def __init__(self, text: str, origin: str, what: str = "YAML") -> None:
        self.origin = origin
        self.lines: dict[Path_, int] = {}
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise UsageError(
                f"{origin}{line}: malformed {what}: {exc.problem or exc.context}"
            ) from exc
        except yaml.YAMLError as exc:
            raise UsageError(f"{origin}: malformed {what}: {exc}") from exc
        finally:
            loader.dispose()
        if node is not None:
            self._index(node, ())
        self.data: Any = data

    def _index(self, node: yaml.Node, path: Path_) -> None:
        # Block scalars (| and >) start on the line after their indicator.
        block = isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")
        self.lines[path] = node.start_mark.line + (2 if block else 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self._index(value, (*path, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._index(item, (*path, index))

    def line(self, path: Path_) -> int | None:
        return self.lines.get(path)

    def nearest_line(self, path: Path_) -> int | None:
        """The line of `path`, or of the closest enclosing value that has one."""
        probe = path
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return None

    def where(self, path: Path_) -> str:
        """'FILE line N: dotted.path', for messages about `path`."""
        return location(self.origin, self.nearest_line(path), path)


def check(
    model: type[M],
    data: Any,
    doc: YamlDoc | None = None,
    *,
    origin: str | None = None,
    noun: str = "field",
    hint: str | None = None,
) -> M:
    """`data` as `model`; else a ConfigError listing every problem (with `doc`'s lines),
    about `origin` (default: the file's), `hint` for a problem that has none of its own."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = explain(exc, model, doc, noun=noun)
    if origin is None:
        origin = doc.origin if doc is not None else ""
    raise ConfigError(origin, problems, hint)


def explain(
    exc: ValidationError, model: type, doc: YamlDoc | None = None, *, noun: str = "field"
) -> list[Problem]:
    """One Problem per error in `exc` (from validating `model`: a pydantic model or a
    dataclass), in file order."""
    found = []
    for error in exc.errors():
        loc, ctx, kind, hint = tuple(error["loc"]), error.get("ctx") or {}, error["type"], None
        if "[key]" in loc:  # a mapping's key, not its value: files name keys as text
            at = loc.index("[key]")
            loc = (*loc[: at - 1], str(loc[at - 1]), *loc[at + 1 :])
        if kind == "invalid_key":  # a model's key that YAML read as a number or date
            loc = (*loc[:-1], str(loc[-1]))
            message = f"the key {loc[-1]} must be a string"
        elif kind == "string_type" and "[key]" in error["loc"]:
            message = f"the key {_short(error['input'])} must be a string"
        elif kind in ("missing", "missing_keyword_argument"):
            loc, message = loc[:-1], f"{noun} {loc[-1]!r} is missing"
        elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
            message, hint = f"unknown {noun} {loc[-1]!r}", _suggest(str(loc[-1]), model, loc[:-1])
        elif kind == "ccloudvm":
            loc = (*loc, *ctx.get("at", ()))
            message, hint = str(ctx["message"]), ctx.get("hint")
        elif kind in _KINDS:
            message = f"must be {_KINDS[kind]}, not {_short(error['input'])}"
        elif kind == "literal_error":
            message = f"must be {str(ctx.get('expected', '')).replace(chr(39), '')}"
        else:
            text = error["msg"]
            message = text[:1].lower() + text[1:]
        line = doc.nearest_line(loc) if doc is not None else None
        found.append(Problem(loc, line, message, hint))
    return sorted(found, key=lambda p: p.line or 0)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _suggest(key: str, model: type, path: Path_) -> str | None:
    names = _field_names(model, path)
    if not names:
        return None
    close = difflib.get_close_matches(key, names, n=1)
    return f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(names)


def _field_names(model: type, path: Path_) -> list[str]:
    """The field names (as written in files) of the model found at `path` below `model`."""
    current: Any = model
    for part in path:
        current = _step(current, part)
        if current is None:
            return []
    return list(_fields(_unwrap(current)))


def _fields(model: Any) -> dict[str, Any]:
    """Name as written in files -> annotation, of a pydantic model or a dataclass."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {info.alias or name: info.annotation for name, info in model.model_fields.items()}
    if isinstance(model, type) and dataclasses.is_dataclass(model):
        return typing.get_type_hints(model, include_extras=True)
    return {}


def _unwrap(annotation: Any) -> Any:
    """The model or container inside Optional[...] and Annotated[...]."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _step(annotation: Any, part: str | int) -> Any:
    annotation = _unwrap(annotation)
    fields = _fields(annotation)
    if fields:
        return fields.get(str(part))
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, tuple) and isinstance(part, int) and args:
        return args[0]
    if typing.get_origin(annotation) is dict and len(args) == 2:
        return args[1]
    return None
