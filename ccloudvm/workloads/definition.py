"""Workloads: find, validate, inherit, render and merge workload definitions.

A workload file is plain YAML whose string values are Jinja2 templates (docs/workloads.md).
Loading one is: find it (path, URL, the user's workloads folder, bundled templates/),
read its `inherits` (one parent or a list), validate every file with line numbers,
linearize the parents (each file once, parents before children, earlier parents before
later ones), render each file's templates in its own environment (sandboxed when it came
from a URL), and merge them in that order into one frozen Workload.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import jinja2
import yaml

from ccloudvm.core.errors import NotFoundError, UsageError
from ccloudvm.core.sizes import SizeError, accepted_forms, parse_size
from ccloudvm.core.specs import SECURITY_MODELS, MountSpec, PortSpec
from ccloudvm.guest.proxy import ProxySettings
from ccloudvm.state.paths import StateDir, resource_dir
from ccloudvm.workloads.templating import (
    Download,
    Downloads,
    TemplateContext,
    make_environment,
    render,
)
from ccloudvm.workloads.templating import variables as template_variables

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_REMOTE_BYTES = 1 << 20
CLUSTER_SCRIPTS = ("setup", "verify", "bat", "cleanup", "env")
DRIVE_FORMAT_RE = re.compile(r"[a-z0-9]+")
T = TypeVar("T")

# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DriveSpec:
    """An extra disk attached to the VM."""

    path: Path
    format: str = "qcow2"
    options: str = ""


@dataclass(frozen=True)
class VMSpec:
    mem_mib: int | None = None
    cpus: int | None = None
    disk_gib: int | None = None
    ports: tuple[PortSpec, ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    drives: tuple[DriveSpec, ...] = ()


@dataclass(frozen=True)
class ProvisionStep:
    """One named step: a rendered shell script, or a file to copy. Runs via provision.py."""

    name: str
    script: str | None = None
    copy_src: Path | None = None
    copy_dest: str | None = None
    sudo: bool = False
    uploads: tuple[Download, ...] = ()
    copy_mode: int = 0o644
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Check:
    name: str
    run: str
    sudo: bool = False


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    origin: str
    image: str
    vm: VMSpec
    needs_nested_vm: bool
    user_data: dict[str, Any]
    provision: tuple[ProvisionStep, ...]
    checks: tuple[Check, ...]
    cluster: dict[str, str]
    ca_certs: tuple[str, ...]
    chain: tuple[str, ...] = ()  # names from the root parent to this workload
    cluster_network: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkloadSource:
    name: str
    origin: str  # absolute path or URL
    text: str
    base_dir: Path | None  # folder for relative file references; None for URLs

    @property
    def remote(self) -> bool:
        return self.base_dir is None


# ---------------------------------------------------------------------------- lookup


def _bundled_dir() -> Path:
    return resource_dir("templates")


def _is_url(ref: str) -> bool:
    return re.match(r"https?://", ref) is not None


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.startswith((".", "~")) or ref.endswith((".yaml", ".yml"))


def _read_path(path: Path) -> WorkloadSource:
    path = path.expanduser().absolute()
    if not path.is_file():
        raise NotFoundError(f"workload file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read workload file {path}: {exc}") from exc
    return WorkloadSource(name=path.stem, origin=str(path), text=text, base_dir=path.parent)


def _fetch_url(url: str) -> WorkloadSource:
    import requests  # only needed for URL workloads

    try:
        # requests takes the host's proxies from the environment.
        response = requests.get(url, timeout=30, stream=True)
        response.raise_for_status()
        body = response.raw.read(MAX_REMOTE_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise UsageError(
            f"cannot fetch workload {url}: {exc}",
            hint="check the URL, and http_proxy/https_proxy if you are behind a proxy",
        ) from exc
    if len(body) > MAX_REMOTE_BYTES:
        raise UsageError(f"workload {url} is larger than 1 MiB; is it really a workload file?")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"workload {url} is not UTF-8 text") from exc
    stem = Path(urlsplit(url).path).stem or "workload"
    return WorkloadSource(name=stem, origin=url, text=text, base_dir=None)


def _name_folders(state: StateDir) -> tuple[Path, Path]:
    """Where names are looked up, in order: the user's own workloads override bundled ones
    of the same name (as the user's images do)."""
    return (state.user_workloads, _bundled_dir())


def _named_candidates(state: StateDir) -> list[tuple[str, Path]]:
    """(name, path) of every workload found by name, in lookup order."""
    found: list[tuple[str, Path]] = []
    for folder in _name_folders(state):
        if folder.is_dir():
            found.extend((p.stem, p) for p in sorted(folder.glob("*.yaml")))
    return found


def find_workload(state: StateDir, ref: str, *, skip: str | None = None) -> WorkloadSource:
    """A URL or a path as given; else a name in <state>/workloads/, then templates/.

    `skip` is the origin of a file looking for its parent: your own debian.yaml that says
    `inherits: debian` extends the bundled debian instead of inheriting itself.
    """
    if _is_url(ref):
        return _fetch_url(ref)
    if _is_path(ref):
        return _read_path(Path(ref))
    if not NAME_RE.fullmatch(ref):
        raise UsageError(f"invalid workload name {ref!r}", hint="use letters, digits, . _ -")
    paths = [folder / f"{ref}.yaml" for folder in _name_folders(state)]
    found = [path for path in paths if path.is_file()]
    for path in found:
        if str(path.absolute()) != skip:
            return _read_path(path)
    if found:  # only the file itself: let the cycle check name it
        return _read_path(found[0])
    names = sorted({name for name, _ in _named_candidates(state)})
    close = difflib.get_close_matches(ref, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise NotFoundError(
        f"no workload named {ref!r}",
        hint=hint + "run 'ccloudvm workloads' to list them, or give a path or URL",
    )


def _find_parent(state: StateDir, child: WorkloadSource, ref: str) -> WorkloadSource:
    """Names resolve as usual; relative paths resolve against the child's folder or URL."""
    if _is_url(ref):
        return _fetch_url(ref)
    if _is_path(ref):
        if child.base_dir is None:
            return _fetch_url(urljoin(child.origin, ref))
        path = Path(ref).expanduser()
        return _read_path(path if path.is_absolute() else child.base_dir / path)
    return find_workload(state, ref, skip=child.origin)


# ---------------------------------------------------------------------------- parsing


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


# ---------------------------------------------------------------------------- merging


def merge_config(parent: Any, child: Any) -> Any:
    """Cloud-config merge: maps recursively, lists concatenate parent first, else child."""
    if isinstance(parent, dict) and isinstance(child, dict):
        merged = dict(parent)
        for key, value in child.items():
            merged[key] = merge_config(parent[key], value) if key in parent else value
        return merged
    if isinstance(parent, list) and isinstance(child, list):
        return [*parent, *child]
    return child


def merge_replacing(
    parent: Sequence[T],
    child: Sequence[T],
    clash: Callable[[T, T], bool],
    combine: Callable[[T, T], T] = lambda _old, new: new,
) -> tuple[T, ...]:
    """The parent's entries, each replaced in place by a child's entry that clashes with
    it (`combine(old, new)`: the new one); the child's other entries follow. Nothing that
    clashes survives twice."""
    merged = list(parent)
    for item in child:
        hits = [index for index, old in enumerate(merged) if clash(old, item)]
        if not hits:
            merged.append(item)
            continue
        merged[hits[0]] = combine(merged[hits[0]], item)
        for index in reversed(hits[1:]):
            del merged[index]
    return tuple(merged)


def ports_clash(a: PortSpec, b: PortSpec) -> bool:
    """The same host port and address (only one forward can own it) or the same guest
    port (moved)."""
    return (a.host, a.bind_address) == (b.host, b.bind_address) or a.guest == b.guest


def mounts_clash(a: MountSpec, b: MountSpec) -> bool:
    """The same tag (when both have one) or the same guest folder."""
    return bool(a.tag and a.tag == b.tag) or a.guest_path == b.guest_path


def _keep_tag(old: MountSpec, new: MountSpec) -> MountSpec:
    """An untagged mount that replaces a tagged one keeps the tag (scripts may name it)."""
    return new if new.tag else replace(new, tag=old.tag)


def merge_vm(parent: VMSpec, child: VMSpec) -> VMSpec:
    return VMSpec(
        mem_mib=child.mem_mib if child.mem_mib is not None else parent.mem_mib,
        cpus=child.cpus if child.cpus is not None else parent.cpus,
        disk_gib=child.disk_gib if child.disk_gib is not None else parent.disk_gib,
        ports=merge_replacing(parent.ports, child.ports, ports_clash),
        mounts=merge_replacing(parent.mounts, child.mounts, mounts_clash, _keep_tag),
        drives=merge_replacing(parent.drives, child.drives, lambda a, b: a.path == b.path),
    )


def _tag_mounts(mounts: Sequence[MountSpec]) -> tuple[MountSpec, ...]:
    """Give each untagged mount (tag "") the first free tag mount0, mount1, ... once the
    whole chain is merged, so untagged mounts of different files never collide."""
    used = {m.tag for m in mounts if m.tag}
    tagged = []
    number = 0
    for mount in mounts:
        if not mount.tag:
            while f"mount{number}" in used:
                number += 1
            used.add(f"mount{number}")
            mount = replace(mount, tag=f"mount{number}")
        tagged.append(mount)
    return tuple(tagged)


# ---------------------------------------------------------------------------- rendering


def _size(doc: _Doc, path: tuple[str | int, ...], value: int | str, unit: str) -> int:
    """An integer in `unit` (M or G), or a string like '4G', '512M' or '1.5G' (ccloudvm.core.sizes)."""
    try:
        number = parse_size(value, unit)
    except SizeError as exc:
        raise UsageError(
            f"{doc.where(path)} must be a number or a size like 4G, not {value!r}",
            hint=accepted_forms(unit),
        ) from exc
    if number <= 0:
        raise UsageError(f"{doc.where(path)} must be positive")
    return number


class _Level:
    """One file of the chain, rendered."""

    def __init__(
        self,
        doc: _Doc,
        ctx: TemplateContext,
        wvars: Mapping[str, Any],
        cache_dir: Path,
        untrusted_from: str | None = None,
    ) -> None:
        self.doc = doc
        # The URL of the workload that makes this level untrusted: its own, or that of a
        # child from a URL that inherits it. Host mounts, drives, files and CA certificate
        # files are refused for the whole chain then, whatever level names them (issue 8).
        self.untrusted_from = doc.src.origin if doc.src.remote else untrusted_from
        self.ctx = ctx
        self.wvars = wvars
        self.cache_dir = cache_dir
        src = doc.src
        search = [] if src.base_dir is None else [src.base_dir]
        self.env: jinja2.Environment = make_environment(src.remote, [*search, _bundled_dir()])

    def render(
        self,
        path: tuple[str | int, ...],
        *,
        inline: str | None = None,
        file: str | None = None,
        downloads: Downloads | None = None,
    ) -> str:
        label = f"workload {self.doc.src.name} ({self.doc.where(path)})"
        collector = downloads or Downloads(None, label, restricted=self.untrusted_from is not None)
        names = template_variables(self.ctx, self.wvars, collector)
        return render(
            self.env,
            source=inline,
            template_name=file,
            label=label,
            first_line=self.doc.line(path),
            names=names,
        )

    def text(self, path: tuple[str | int, ...], value: str) -> str:
        return self.render(path, inline=value)

    def vm(self) -> VMSpec:
        doc, vm = self.doc, self.doc.data.get("vm") or {}
        mem, disk = vm.get("mem"), vm.get("disk")
        for key in ("mounts", "drives"):
            if self.untrusted_from is not None and vm.get(key):
                # A script from the internet must not get host folders or disks handed to it.
                raise UsageError(
                    f"{doc.where(('vm', key))}: {self._untrusted_text()} cannot share host {key}",
                    hint="download it and run it as a local file, or add --mount yourself",
                )
        ports = []
        for index, port in enumerate(vm.get("ports") or []):
            where = ("vm", "ports", index)
            try:
                ports.append(PortSpec.parse(self.text(where, str(port))))
            except UsageError as exc:
                raise UsageError(
                    f"{doc.where(where)}: {exc.message}",
                    hint="write HOST:GUEST like '8080:80', or one port for both sides",
                ) from exc
        mounts = []
        for index, item in enumerate(vm.get("mounts") or []):
            path: tuple[str | int, ...] = ("vm", "mounts", index)
            guest = self.text((*path, "guest"), item["guest"])
            if not guest.startswith("/"):
                raise UsageError(f"{doc.where((*path, 'guest'))} must be an absolute path")
            model = item.get("security_model")
            if model is not None and model not in SECURITY_MODELS:
                raise UsageError(
                    f"{doc.where((*path, 'security_model'))}: unknown 9p security model {model!r}",
                    hint="use one of " + ", ".join(SECURITY_MODELS),
                )
            # Untagged mounts get their tag after the chain is merged (_tag_mounts).
            tag = self.text((*path, "tag"), item["tag"]) if item.get("tag") else ""
            mounts.append(
                MountSpec(
                    host_path=Path(self.text((*path, "host"), item["host"])).expanduser(),
                    guest_path=guest,
                    tag=tag,
                    security_model=model,
                    readonly=bool(item.get("readonly", False)),
                )
            )
        drives = []
        for index, item in enumerate(vm.get("drives") or []):
            path = ("vm", "drives", index)
            fmt = item.get("format") or "qcow2"
            if not DRIVE_FORMAT_RE.fullmatch(fmt):
                raise UsageError(
                    f"{doc.where((*path, 'format'))}: {fmt!r} is not a disk format",
                    hint="use a QEMU format name such as qcow2 or raw",
                )
            drives.append(
                DriveSpec(
                    path=Path(self.text((*path, "path"), item["path"])).expanduser(),
                    format=fmt,
                    options=item.get("options") or "",
                )
            )
        return VMSpec(
            mem_mib=_size(doc, ("vm", "mem"), mem, "M") if mem is not None else None,
            cpus=vm.get("cpus"),
            disk_gib=_size(doc, ("vm", "disk"), disk, "G") if disk is not None else None,
            ports=tuple(ports),
            mounts=tuple(mounts),
            drives=tuple(drives),
        )

    def user_data(self) -> dict[str, Any]:
        value = self.doc.data.get("user_data")
        if value is None:
            return {}
        if isinstance(value, dict):
            return _render_tree(self, ("user_data",), value)  # type: ignore[no-any-return]
        text = self.text(("user_data",), value)
        return _parse_cloud_config(text, f"{self.doc.where(('user_data',))} (rendered)")

    def _resolve_file(self, path: tuple[str | int, ...], ref: str) -> Path:
        src = self.doc.src
        if src.base_dir is None or self.untrusted_from is not None:
            raise UsageError(
                f"{self.doc.where(path)}: {self._untrusted_text()} cannot read files from this host",
                hint="download it and run it as a local file if you trust it",
            )
        for folder in (src.base_dir, _bundled_dir()):
            candidate = (folder / Path(ref).expanduser()).resolve()
            if candidate.is_file():
                return candidate
        raise UsageError(f"{self.doc.where(path)}: file {ref!r} not found")

    def _untrusted_text(self) -> str:
        if self.doc.src.remote or self.untrusted_from is None:
            return "a workload from a URL"
        return f"a workload inherited by {self.untrusted_from} (from a URL)"

    def steps(self) -> list[ProvisionStep]:
        steps = []
        for index, raw in enumerate(self.doc.data.get("provision") or []):
            path: tuple[str | int, ...] = ("provision", index)
            only = raw.get("only")
            if only == ("vm" if self.ctx.bare_metal else "host"):
                continue
            name = str(raw["name"])
            env = tuple(
                (str(key), self.text((*path, "env", str(key)), str(value)))
                for key, value in (raw.get("env") or {}).items()
            )
            for key, _ in env:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise UsageError(f"{self.doc.where((*path, 'env'))}: bad variable name {key!r}")
            sudo = bool(raw.get("sudo", False))
            if raw.get("copy") is not None:
                copy = raw["copy"]
                mode = str(copy.get("mode", "0644"))
                if not re.fullmatch(r"0?[0-7]{3}", mode):
                    raise UsageError(f"{self.doc.where((*path, 'copy', 'mode'))} must be octal")
                steps.append(
                    ProvisionStep(
                        name=name,
                        copy_src=self._resolve_file((*path, "copy", "src"), copy["src"]),
                        copy_dest=self.text((*path, "copy", "dest"), copy["dest"]),
                        sudo=sudo,
                        copy_mode=int(mode, 8),
                        env=env,
                    )
                )
                continue
            downloads = Downloads(
                self.cache_dir, f"step {name!r}", restricted=self.untrusted_from is not None
            )
            if raw.get("script") is not None:
                script = self.render((*path, "script"), file=raw["script"], downloads=downloads)
            else:
                script = self.render((*path, "run"), inline=raw["run"], downloads=downloads)
            steps.append(
                ProvisionStep(
                    name=name, script=script, sudo=sudo, uploads=tuple(downloads.items), env=env
                )
            )
        return steps

    def checks(self) -> list[Check]:
        checks = []
        for index, raw in enumerate(self.doc.data.get("checks") or []):
            path: tuple[str | int, ...] = ("checks", index)
            if raw.get("script") is not None:
                run = self.render((*path, "script"), file=raw["script"])
            else:
                run = self.text((*path, "run"), raw["run"])
            checks.append(Check(name=str(raw["name"]), run=run, sudo=bool(raw.get("sudo", False))))
        return checks

    def cluster(self) -> dict[str, str]:
        scripts = {}
        for name in CLUSTER_SCRIPTS:
            value = (self.doc.data.get("cluster") or {}).get(name)
            if value is None:
                continue
            path: tuple[str | int, ...] = ("cluster", name)
            if _looks_like_template_file(value):
                scripts[name] = self.render(path, file=value.strip())
            else:
                scripts[name] = self.text(path, value)
        return scripts

    def ca_certs(self) -> list[str]:
        certs = []
        for index, value in enumerate(self.doc.data.get("ca_certs") or []):
            path: tuple[str | int, ...] = ("ca_certs", index)
            if "-----BEGIN" in value:
                certs.append(_check_pem(value, self.doc.where(path)))
            else:
                certs.append(read_ca_cert(self._resolve_file(path, value)))
        return certs


def _looks_like_template_file(value: str) -> bool:
    """A cluster script is a file reference when it is one word ending in .j2 or .sh."""
    text = value.strip()
    return re.fullmatch(r"[\w./-]+\.(j2|sh)", text) is not None


def _render_tree(level: _Level, path: tuple[str | int, ...], value: Any) -> Any:
    """Render every string in a user_data given as a YAML mapping instead of a template."""
    if isinstance(value, dict):
        return {k: _render_tree(level, (*path, str(k)), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_tree(level, (*path, i), v) for i, v in enumerate(value)]
    if isinstance(value, str):
        return level.text(path, value)
    return value


def _parse_cloud_config(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{where}{line}: malformed cloud-config YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{where}: malformed cloud-config YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{where}: cloud-config must be a YAML mapping")
    return data


def _check_pem(text: str, where: str) -> str:
    if "-----BEGIN CERTIFICATE-----" not in text or "-----END CERTIFICATE-----" not in text:
        raise UsageError(f"{where}: not a PEM certificate (-----BEGIN CERTIFICATE----- ...)")
    return text.strip() + "\n"


def read_ca_cert(path: Path) -> str:
    """The PEM text of a CA certificate file given with --ca-cert or in a workload."""
    try:
        text = path.expanduser().read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read CA certificate {path}: {exc}") from exc
    return _check_pem(text, str(path))


# ---------------------------------------------------------------------------- loading


def _parents(doc: _Doc) -> list[tuple[tuple[str | int, ...], str]]:
    """(where, ref) of each parent a file names, in the order it names them."""
    value = doc.data.get("inherits")
    if not value:
        return []
    if isinstance(value, str):
        return [(("inherits",), value)]
    return [(("inherits", index), str(ref)) for index, ref in enumerate(value)]


def _chain(state: StateDir, ref: str) -> list[_Doc]:
    """Every file of the inheritance graph in merge order; a cycle is an error naming it.

    Depth first, parents before their child, a file's parents in the order it lists them,
    each file once (where two parents share an ancestor, it comes before both). So later
    parents win over earlier ones, the child over all, and steps run in parent order.
    """
    order: list[_Doc] = []
    merged: set[str] = set()

    def visit(src: WorkloadSource, stack: list[WorkloadSource]) -> None:
        origins = [s.origin for s in stack]
        if src.origin in origins:
            cycle = " -> ".join([*(s.name for s in stack[origins.index(src.origin) :]), src.name])
            raise UsageError(f"inheritance cycle: {cycle}", hint="remove one of the inherits")
        if src.origin in merged:
            return
        doc = _Doc(src)
        _validate(doc)
        for where, parent in _parents(doc):
            try:
                parent_src = _find_parent(state, src, parent)
            except NotFoundError as exc:
                raise UsageError(
                    f"{doc.where(where)}: parent workload {parent!r} not found: {exc.message}",
                    hint=exc.hint,
                ) from exc
            visit(parent_src, [*stack, src])
        merged.add(src.origin)
        order.append(doc)

    visit(find_workload(state, ref), [])
    return order


def _fragments(
    ctx: TemplateContext, propagate_proxy: bool, ca_certs: Sequence[str]
) -> dict[str, Any]:
    """The proxy and CA cloud-config fragments from cloud-init/, merged."""
    env = make_environment(False, [resource_dir("cloud-init")])
    merged: dict[str, Any] = {}
    parts = []
    if ca_certs:
        parts.append(("ca-certs.yaml.j2", {"ca_certs": list(ca_certs)}))
    if propagate_proxy and not ctx.proxies.is_empty():
        parts.append(("proxy.yaml.j2", {}))
    for template, extra in parts:
        names = template_variables(ctx, {}, Downloads(None, f"cloud-init/{template}"))
        text = render(
            env, template_name=template, label=f"cloud-init/{template}", names={**names, **extra}
        )
        merged = merge_config(merged, _parse_cloud_config(text, f"cloud-init/{template}"))
    return merged


def load_workload(
    state: StateDir,
    ref: str,
    ctx: TemplateContext,
    *,
    propagate_proxy: bool = True,
    ca_certs: Sequence[Path] = (),
) -> Workload:
    """Find, validate, render and merge workload `ref`; any bad input is a UsageError."""
    if not propagate_proxy:
        ctx = replace(ctx, proxies=ProxySettings())
    docs = _chain(state, ref)
    wvars: dict[str, Any] = {}
    for doc in docs:
        wvars = merge_config(wvars, doc.data.get("vars") or {})
    cache_dir = state.cache / "downloads"
    vm = VMSpec()
    user_data: dict[str, Any] = {}
    steps: list[ProvisionStep] = []
    checks: list[Check] = []
    cluster: dict[str, str] = {}
    network: dict[str, Any] = {}
    certs: list[str] = [read_ca_cert(p) for p in ca_certs]
    image = ""
    description = ""
    nested = False
    remote = [d.src.origin for d in docs if d.src.remote]
    untrusted_from = remote[-1] if remote else None
    for doc in docs:
        level = _Level(doc, ctx, wvars, cache_dir, untrusted_from)
        data = doc.data
        image = data.get("image") or image
        description = data.get("description") or description
        if data.get("needs_nested_vm") is not None:
            nested = bool(data["needs_nested_vm"])
        vm = merge_vm(vm, level.vm())
        user_data = merge_config(user_data, level.user_data())
        steps.extend(level.steps())
        checks.extend(level.checks())
        cluster.update(level.cluster())
        network = merge_config(network, (data.get("cluster") or {}).get("network") or {})
        certs.extend(level.ca_certs())
    top = docs[-1]
    if not image:
        raise UsageError(
            f"{top.src.origin}: workload {top.src.name!r} names no image",
            hint="set image: (for example debian-12) or inherit from a workload that does",
        )
    unique_certs = tuple(dict.fromkeys(certs))
    user_data = merge_config(_fragments(ctx, propagate_proxy, unique_certs), user_data)
    return Workload(
        name=top.src.name,
        description=description,
        origin=top.src.origin,
        image=image,
        vm=replace(vm, mounts=_tag_mounts(vm.mounts)),
        needs_nested_vm=nested,
        user_data=user_data,
        provision=tuple(steps),
        checks=tuple(checks),
        cluster=cluster,
        ca_certs=unique_certs,
        chain=tuple(d.src.name for d in docs),
        cluster_network=network,
        vars=wvars,
    )


# ---------------------------------------------------------------------------- listing


def list_workloads(state: StateDir) -> list[tuple[str, str, str]]:
    """(name, description, origin) of every workload found by name, in lookup order."""
    rows = []
    seen: set[str] = set()
    for name, path in _named_candidates(state):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            description = str(data.get("description", "")) if isinstance(data, dict) else ""
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            description = "(unreadable: run 'ccloudvm workload show' for the error)"
        if name in seen:
            description = f"(overridden by your {state.user_workloads / name}.yaml) {description}"
        seen.add(name)
        rows.append((name, description, str(path)))
    return rows


class _BlockDumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def workload_as_dict(w: Workload) -> dict[str, Any]:
    """The merged, rendered workload as plain data (what `workload show` prints)."""
    vm: dict[str, Any] = {
        "mem": w.vm.mem_mib,
        "cpus": w.vm.cpus,
        "disk": w.vm.disk_gib,
        "ports": [str(p) for p in w.vm.ports],
        "mounts": [
            {
                "host": str(m.host_path),
                "guest": m.guest_path,
                "tag": m.tag,
                **({"security_model": m.security_model} if m.security_model else {}),
                **({"readonly": True} if m.readonly else {}),
            }
            for m in w.vm.mounts
        ],
        "drives": [
            {
                "path": str(d.path),
                "format": d.format,
                **({"options": d.options} if d.options else {}),
            }
            for d in w.vm.drives
        ],
    }
    steps = []
    for step in w.provision:
        item: dict[str, Any] = {"name": step.name}
        if step.sudo:
            item["sudo"] = True
        if step.env:
            item["env"] = dict(step.env)
        if step.script is not None:
            item["run"] = step.script
        else:
            item["copy"] = {
                "src": str(step.copy_src),
                "dest": step.copy_dest,
                "mode": f"{step.copy_mode:04o}",
            }
        if step.uploads:
            item["downloads"] = [{"url": d.url, "dest": d.dest} for d in step.uploads]
        steps.append(item)
    result: dict[str, Any] = {
        "name": w.name,
        "description": w.description,
        "origin": w.origin,
        "inherits": " -> ".join(w.chain),
        "image": w.image,
        "needs_nested_vm": w.needs_nested_vm,
        "vm": {k: v for k, v in vm.items() if v not in (None, [])},
        "user_data": w.user_data,
        "provision": steps,
        "checks": [
            {"name": c.name, "run": c.run, **({"sudo": True} if c.sudo else {})} for c in w.checks
        ],
    }
    if w.vars:
        result["vars"] = w.vars
    if w.cluster or w.cluster_network:
        result["cluster"] = {"network": w.cluster_network, **w.cluster}
    return result


def render_workload_yaml(w: Workload) -> str:
    """YAML for `ccloudvm workload show NAME`: everything that will run, fully rendered."""
    return yaml.dump(
        workload_as_dict(w),
        Dumper=_BlockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
