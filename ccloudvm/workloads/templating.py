"""Jinja2 rendering of workload parts: the context, the helpers, and one error style.

Every template sees the same variables (see docs/workloads.md). Workloads fetched from a
URL render in Jinja2's immutable sandbox, so a template from the internet can neither reach
Python internals on the host nor change the variables other templates see, and its
download() calls may not point at this host or its private networks. Every error while
rendering (Jinja's own, or a Python error inside an expression such as 1/0) becomes one
UsageError that names the template and, where known, the line.
"""

from __future__ import annotations

import re
import shlex
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.sandbox

from ccloudvm.core.errors import UsageError
from ccloudvm.core.hostinfo import HostUser
from ccloudvm.core.specs import MountSpec
from ccloudvm.guest.proxy import ProxySettings

# download()'s names, as this module has always offered them.
from ccloudvm.workloads.downloads import WORKDIR_VAR as WORKDIR_VAR
from ccloudvm.workloads.downloads import Download as Download
from ccloudvm.workloads.downloads import Downloads as Downloads
from ccloudvm.workloads.downloads import refuse_private_url as refuse_private_url
from ccloudvm.workloads.downloads import shell_path as shell_path


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


def _shquote(value: object) -> str:
    return shlex.quote(str(value))


# Limits on one render: a template from a URL must not hang or flood the host
# (`{{ 9**999999999 }}`, `{{ 'x' * 10**10 }}`). Bundled and local workloads get them too.
RENDER_SECONDS = 10.0
RENDER_MAX_BYTES = 4 * 1024 * 1024
# Operands past these sizes are refused before Python computes them.
_MAX_POWER_BITS = 4096
_MAX_SEQUENCE_ITEMS = RENDER_MAX_BYTES


class RenderLimitError(UsageError):
    pass


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse the arithmetic whose result alone would exhaust the host."""
    if operator == "**" and _is_number(left) and _is_number(right):
        base_bits = abs(left).bit_length() if isinstance(left, int) else 64
        if abs(left) > 1 and abs(right) * base_bits > _MAX_POWER_BITS:
            raise RenderLimitError(f"{left} ** {right} is too large to compute in a template")
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if (
                isinstance(seq, (str, list, tuple))
                and isinstance(count, int)
                and len(seq) * count > _MAX_SEQUENCE_ITEMS
            ):
                raise RenderLimitError(
                    f"repeating a value {count} times makes more than "
                    f"{RENDER_MAX_BYTES // (1024 * 1024)} MiB in a template"
                )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _LimitedSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The environment of workloads from a URL: immutable, sandboxed, and able to call only
    the documented helpers and the plain methods of strings, lists and mappings."""

    intercepted_binops = frozenset(["**", "*"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def is_safe_callable(self, obj: Any) -> bool:
        if not super().is_safe_callable(obj):
            return False
        if getattr(obj, _HELPER_MARK, False):
            return True
        owner = getattr(obj, "__self__", None)
        # str.upper, list.index, dict.items ...: methods of plain values (mutators are
        # already refused by the immutable sandbox).
        return isinstance(owner, (str, list, tuple, dict)) and not isinstance(owner, type)


# Set on the functions templates may call (download, proxy_env, proxy_vars).
_HELPER_MARK = "_ccloudvm_template_helper"


def _helper(name: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Mark a function as callable from templates, under the name templates know it by
    (so an error says `download() missing ...`)."""

    def mark(function: Callable[..., str]) -> Callable[..., str]:
        setattr(function, _HELPER_MARK, True)
        function.__name__ = function.__qualname__ = name
        return function

    return mark


def make_environment(sandboxed: bool, search_path: Sequence[Path] = ()) -> jinja2.Environment:
    """The Jinja2 environment for one workload file: strict, and sandboxed for URLs.

    The immutable sandbox also refuses list.append, dict.update and the like, so a
    template from a URL cannot change `vars` or `proxies` under the other templates; it
    calls only the documented helpers and the methods of plain values.
    """
    cls = _LimitedSandbox if sandboxed else jinja2.Environment
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


def _plain_host(host: HostUser) -> dict[str, Any]:
    """The host user as plain values: a template gets no object with methods (a Path's
    read_text or write_text would reach the host's files)."""
    return {
        "name": host.name,
        "uid": host.uid,
        "gid": host.gid,
        "group": host.group,
        "home": str(host.home),
        "gopath": str(host.gopath),
        "git_name": host.git_name,
        "git_email": host.git_email,
        "is_root": host.is_root,
    }


def _plain_mount(mount: MountSpec) -> dict[str, Any]:
    return {
        "host_path": str(mount.host_path),
        "guest_path": mount.guest_path,
        "tag": mount.tag,
        "readonly": mount.readonly,
        "security_model": mount.security_model,
    }


def plain(value: Any) -> Any:
    """`value` as plain template data: strings, numbers, booleans, None, lists and
    mappings with string keys; a Path becomes its text. Anything else is refused."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    raise TypeError(f"{type(value).__name__} is not plain template data")


def variables(
    ctx: TemplateContext, workload_vars: Mapping[str, Any], download: Callable[..., str]
) -> dict[str, Any]:
    """The names every template sees: plain values, and three helper functions."""
    proxies = ctx.proxies
    proxy_env = proxies.as_env()

    @_helper("proxy_env")
    def proxy_env_lines() -> str:
        """KEY=VALUE lines, both cases, for /etc/environment."""
        return "\n".join(f"{k}={v}" for k, v in proxy_env.items())

    @_helper("proxy_vars")
    def proxy_vars() -> str:
        """'http_proxy=... https_proxy=...' to put in front of a command (empty if none)."""
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in proxy_env.items())

    @_helper("download")
    def download_file(url: str, dest: str, mode: str = "0644") -> str:
        """download(URL, DEST[, MODE]): the host fetches URL, the step installs it."""
        return download(url, dest, mode)

    return {
        "host": _plain_host(ctx.host),
        "user": plain(ctx.user()),
        "instance": {"name": ctx.instance_name, "hostname": ctx.instance_name},
        "proxies": {
            "http": proxies.http or "",
            "https": proxies.https or "",
            "no_proxy": proxies.no_proxy_text,
            "enabled": not proxies.is_empty(),
            "env": dict(proxy_env),
        },
        "mounts": [_plain_mount(m) for m in ctx.mounts],
        "bare_metal": ctx.bare_metal,
        # A copy for every template, so nothing one template does reaches another.
        "vars": plain({**workload_vars, **ctx.extra}),
        "proxy_env": proxy_env_lines,
        "proxy_vars": proxy_vars,
        "download": download_file,
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
        with _time_limit(label):
            return _render_limited(template, names, label)
    except RenderLimitError as exc:
        if exc.message.startswith(label):
            raise
        # raised by call_binop, which does not know the template's name
        raise RenderLimitError(
            f"{label}: {exc.message}", hint="use smaller numbers in the template"
        ) from exc
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
        problem = problem.replace("variables.<locals>.download_file()", "download()")
        raise UsageError(
            f"{where}: {type(exc).__name__} while rendering: {problem}".rstrip(": "),
            hint="fix the expression in the template",
        ) from exc


def _render_limited(template: jinja2.Template, names: Mapping[str, Any], label: str) -> str:
    """Render piece by piece, stopping as soon as the output passes RENDER_MAX_BYTES."""
    parts: list[str] = []
    size = 0
    for part in template.generate(**names):
        size += len(part)
        if size > RENDER_MAX_BYTES:
            raise RenderLimitError(
                f"{label}: the rendered text passes {RENDER_MAX_BYTES // (1024 * 1024)} MiB",
                hint="a template should render a script or a config, not data",
            )
        parts.append(part)
    return "".join(parts)


@contextmanager
def _time_limit(label: str) -> Iterator[None]:
    """Stop a render that takes longer than RENDER_SECONDS (main thread only: that is
    where signals arrive; the CLI renders there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise RenderLimitError(
            f"{label}: rendering took longer than {RENDER_SECONDS:.0f} s and was stopped",
            hint="look for a loop or an expression that never ends",
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, RENDER_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
