"""Jinja2 rendering of workload parts: the context, the helpers, and one error style.

Every template sees the same variables (see docs/workloads.md). Workloads fetched from a
URL render in Jinja2's immutable sandbox, so a template from the internet can neither reach
Python internals on the host nor change the variables other templates see, and its
download() calls may not point at this host or its private networks. Every error while
rendering (Jinja's own, or a Python error inside an expression such as 1/0) becomes one
UsageError that names the template and, where known, the line.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import re
import shlex
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jinja2
import jinja2.exceptions
import jinja2.sandbox

from ccloudvm.errors import UsageError
from ccloudvm.hostinfo import HostUser
from ccloudvm.proxy import ProxySettings
from ccloudvm.specs import MountSpec

# The shell variable naming the per-run work folder on the target; provision.run_steps
# sets it at the top of every step script and uploads downloaded files into it.
WORKDIR_VAR = "CCLOUDVM_WORKDIR"


@dataclass(frozen=True)
class TemplateContext:
    host: HostUser
    instance_name: str
    proxies: ProxySettings  # the guest's view (see proxy.for_guest)
    mounts: list[MountSpec] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    bare_metal: bool = False  # steps run on this host, as the host user

    def user(self) -> dict[str, Any]:
        """The user the steps run as: the guest user in a VM, the host user on bare metal."""
        h = self.host
        if self.bare_metal:
            return {
                "name": h.name,
                "uid": h.uid,
                "gid": h.gid,
                "home": str(h.home),
                "gopath": str(h.gopath),
            }
        return {
            "name": h.guest_name,
            "uid": h.guest_uid,
            "gid": h.guest_gid,
            "home": h.guest_home,
            "gopath": guest_gopath(h),
        }


def guest_gopath(host: HostUser) -> str:
    """The GOPATH of the guest user: the host's own path, so paths mean the same on both
    sides; but on a root host the guest user is `ccloudvm`, who cannot enter /root, so
    there it is that user's ~/go."""
    if host.is_root:
        return f"{host.guest_home}/go"
    return str(host.gopath)


@dataclass(frozen=True)
class Download:
    """A file the host fetches (through its own proxy) and uploads before a step runs."""

    url: str
    cache_path: Path  # where the host keeps it, under <state>/cache/downloads
    staging_name: str  # its name inside the step's work folder on the target
    dest: str  # where the step installs it (may start with ~/)
    restricted: bool = False  # asked for by a workload from a URL: public addresses only


def refuse_private_url(url: str, where: str) -> None:
    """Refuse a URL whose host is (or resolves to) this host or a private network.

    Used for download() in workloads from a URL, so a workload from the internet cannot
    make the host fetch from its own loopback services or the local network and hand the
    result to the guest. A name that does not resolve here is let through: behind a proxy
    the host may not resolve outside names at all, and the fetch is checked again.
    """
    host = urlsplit(str(url)).hostname or ""
    addresses: list[str] = []
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        if host.lower() == "localhost" or host.lower().endswith((".localhost", ".local")):
            addresses = ["127.0.0.1"]
        else:
            try:
                addresses = [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
            except (OSError, UnicodeError):
                addresses = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not address.is_global or address.is_multicast:
            raise UsageError(
                f"download({url!r}) in {where}: a workload from a URL may not fetch from "
                f"{text}, a loopback, link-local or private address",
                hint="download the workload and run it as a local file if you trust it",
            )


class Downloads:
    """Collects download() calls while one provision step renders."""

    def __init__(self, cache_dir: Path | None, where: str, *, restricted: bool = False) -> None:
        self.cache_dir = cache_dir
        self.where = where
        self.restricted = restricted
        self.items: list[Download] = []

    def __call__(self, url: str, dest: str, mode: str = "0644") -> str:
        if self.cache_dir is None:
            raise UsageError(
                f"download() can only be used in provision steps, not in {self.where}",
                hint="move the download into a provision step",
            )
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"download({url!r}) in {self.where}: only http(s) URLs can be fetched")
        if not re.fullmatch(r"0?[0-7]{3}", str(mode)):
            raise UsageError(f"download() in {self.where}: mode {mode!r} is not octal like 0644")
        if self.restricted:
            refuse_private_url(str(url), self.where)
        base = PurePosixPath(parts.path).name or "download"
        base = re.sub(r"[^A-Za-z0-9._-]", "_", base)
        digest = hashlib.sha256(str(url).encode()).hexdigest()[:16]
        item = Download(
            url=str(url),
            cache_path=self.cache_dir / f"{digest}-{base}",
            staging_name=f"dl-{digest}-{base}",
            dest=str(dest),
            restricted=self.restricted,
        )
        self.items.append(item)
        staged = f'"${WORKDIR_VAR}"/{item.staging_name}'
        return f"install -D -m {mode} {staged} {shell_path(item.dest)}"


def shell_path(path: str) -> str:
    """Quote a path for the shell, letting a leading ~/ mean the running user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _shquote(value: object) -> str:
    return shlex.quote(str(value))


def make_environment(sandboxed: bool, search_path: Sequence[Path] = ()) -> jinja2.Environment:
    """The Jinja2 environment for one workload file: strict, and sandboxed for URLs.

    The immutable sandbox also refuses list.append, dict.update and the like, so a
    template from a URL cannot change `vars` or `proxies` under the other templates.
    """
    cls = jinja2.sandbox.ImmutableSandboxedEnvironment if sandboxed else jinja2.Environment
    env = cls(
        undefined=jinja2.StrictUndefined,
        loader=jinja2.FileSystemLoader([str(p) for p in search_path]),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - renders shell and YAML, never HTML
    )
    env.filters["shquote"] = _shquote
    env.filters["shell_path"] = shell_path
    return env


def variables(
    ctx: TemplateContext, workload_vars: Mapping[str, Any], download: Callable[..., str]
) -> dict[str, Any]:
    """The names every template sees."""
    proxies = ctx.proxies
    proxy_env = proxies.as_env()

    def proxy_env_lines() -> str:
        """KEY=VALUE lines, both cases, for /etc/environment."""
        return "\n".join(f"{k}={v}" for k, v in proxy_env.items())

    def proxy_vars() -> str:
        """'http_proxy=... https_proxy=...' to put in front of a command (empty if none)."""
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in proxy_env.items())

    return {
        "host": ctx.host,
        "user": ctx.user(),
        "instance": {"name": ctx.instance_name, "hostname": ctx.instance_name},
        "proxies": {
            "http": proxies.http or "",
            "https": proxies.https or "",
            "no_proxy": proxies.no_proxy_text,
            "enabled": not proxies.is_empty(),
            "env": proxy_env,
        },
        "mounts": list(ctx.mounts),
        "bare_metal": ctx.bare_metal,
        # A copy for every template, so nothing one template does reaches another.
        "vars": copy.deepcopy({**workload_vars, **ctx.extra}),
        "proxy_env": proxy_env_lines,
        "proxy_vars": proxy_vars,
        "download": download,
    }


def _undefined_name(exc: jinja2.UndefinedError) -> str:
    message = str(exc.message or exc)
    match = re.match(r"'([^']+)' is undefined", message)
    if match:
        return f"undefined template variable '{match.group(1)}'"
    match = re.search(r"has no attribute '([^']+)'", message)
    if match:
        return f"undefined template variable or attribute '{match.group(1)}' ({message})"
    return f"undefined template variable: {message}"


def render(
    env: jinja2.Environment,
    *,
    source: str | None = None,
    template_name: str | None = None,
    label: str,
    first_line: int | None = None,
    names: Mapping[str, Any],
) -> str:
    """Render inline `source` or the file `template_name`; errors name `label` and a line.

    `first_line` is the line of the workload file where an inline source starts, so a
    syntax error can point into the workload file.
    """
    try:
        if template_name is not None:
            template = env.get_template(template_name)
        else:
            template = env.from_string(source or "")
        return template.render(**names)
    except UsageError:
        raise
    except jinja2.TemplateNotFound as exc:
        raise UsageError(
            f"{label}: template file {exc.name!r} not found",
            hint="paths are relative to the workload's folder or the bundled templates/",
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise UsageError(
            f"{_where(label, exc.name, exc.lineno, first_line)}: {exc.message}"
        ) from exc
    except jinja2.exceptions.SecurityError as exc:
        raise UsageError(
            f"{label}: unsafe template access refused in a workload from a URL: {exc}"
        ) from exc
    except jinja2.UndefinedError as exc:
        where = label if template_name is None else f"{label} (template {template_name})"
        raise UsageError(f"{where}: {_undefined_name(exc)}") from exc
    except jinja2.TemplateError as exc:
        raise UsageError(f"{label}: template error: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any error inside an expression is the template's
        # 1/0, "x" + 1, download(1): Python errors raised while the template runs.
        line = _template_line(exc, template_name)
        where = label if template_name is None else f"{label} (template {template_name})"
        if line is not None:
            where = _where(label, template_name, line, first_line)
        problem = str(exc).splitlines()[0] if str(exc) else ""
        problem = problem.replace("Downloads.__call__()", "download()")
        raise UsageError(
            f"{where}: {type(exc).__name__} while rendering: {problem}".rstrip(": "),
            hint="fix the expression in the template",
        ) from exc


def _template_line(exc: BaseException, template_name: str | None) -> int | None:
    """The template line an exception was raised on (Jinja2 rewrites its tracebacks so
    template frames carry template lines)."""
    wanted = "<template>" if template_name is None else None
    line = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename == wanted or (
            template_name is not None and filename.endswith("/" + template_name)
        ):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _where(label: str, name: str | None, lineno: int | None, first_line: int | None) -> str:
    if name:
        return f"{label} ({name} line {lineno})"
    if lineno is not None and first_line is not None:
        return f"{label} (workload line {first_line + lineno - 1})"
    return f"{label} (line {lineno})"
