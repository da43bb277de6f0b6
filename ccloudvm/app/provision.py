"""Run a workload's provision steps and checks on a Target (an instance, or this host).

Each step's script is written into a private work folder on the target (mktemp -d, so
no guessable /tmp names) and run as `bash -eu FILE`, never `bash -c TEXT`. Files the
step download()s are fetched by the host through its own proxy, cached, and uploaded
into the work folder before the step runs. Progress is one `name ... OK` line per step
(`name ... PASS` per check); a log, when given, gets a header, every output line and
the result of each step.
"""

from __future__ import annotations

import re
import shlex
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ccloudvm.core import ui
from ccloudvm.core.errors import CcloudvmError, UsageError
from ccloudvm.remote.target import OutputSink, Target, check_env_names
from ccloudvm.workloads.definition import Check, ProvisionStep
from ccloudvm.workloads.templating import WORKDIR_VAR, Download, refuse_private_url, shell_path

TAIL_LINES = 15
MAX_REDIRECTS = 10
Fetch = Callable[..., None]  # fetch(url, dest, *, public_only=False)


class StepFailed(UsageError):
    """A provision step exited non-zero (exit status 2, like other bad workload input)."""

    def __init__(self, step: str, status: int, tail: Sequence[str], hint: str | None) -> None:
        super().__init__(f"provision step {step!r} failed with exit status {status}", hint)
        self.step = step
        self.status = status
        self.tail = list(tail)


def fetch_to_cache(url: str, dest: Path, *, public_only: bool = False) -> None:
    """Fetch `url` into `dest` on the host, through the host's proxy (from its environment).

    A plain streaming fetch: ccloudvm.images.download.download() wants a known sha256, which a
    workload's download() does not have. With `public_only` (a download() of a workload
    from a URL) every address, redirects included, must be a public one.
    """
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        location = url
        for _hop in range(MAX_REDIRECTS + 1):
            if public_only:
                refuse_private_url(location, "a workload from a URL")
            response = requests.get(location, stream=True, timeout=60, allow_redirects=False)
            if not response.is_redirect:
                break
            location = requests.compat.urljoin(location, response.headers["location"])
            response.close()
        else:
            raise requests.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")
        with response:
            response.raise_for_status()
            with partial.open("wb") as handle:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    handle.write(chunk)
    except UsageError:
        partial.unlink(missing_ok=True)
        raise
    except (requests.RequestException, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise CcloudvmError(
            f"cannot download {url}: {exc}",
            hint="check the URL, and http_proxy/https_proxy if you are behind a proxy",
        ) from exc
    partial.replace(dest)


class _Output:
    """Where a step's output lines go: the screen (dimmed, or a spinner), a log, a tail."""

    def __init__(self, verbose: bool, log: OutputSink | None, status: Any) -> None:
        self.verbose = verbose
        self.log = log
        self.status = status
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def __call__(self, line: str) -> None:
        self.tail.append(line)
        if self.log is not None:
            self.log(line)
        if self.verbose:
            ui.console.print(f"  {line}", style="dim", markup=False, highlight=False)
        elif self.status is not None:
            self.status.update(line[:100])


class _Workdir:
    """A private folder on the target for step scripts and uploads, removed afterwards."""

    def __init__(self, target: Target) -> None:
        self.target = target
        lines: list[str] = []
        status = target.run(["mktemp", "-d", "/tmp/ccloudvm-XXXXXXXX"], output=lines.append)
        path = lines[-1].strip() if lines else ""
        if status != 0 or not path.startswith("/tmp/ccloudvm-"):
            raise CcloudvmError(
                f"cannot create a work folder on {target.name}: {' '.join(lines)[-200:]}"
            )
        self.path = path

    def remove(self) -> None:
        self.target.run(["rm", "-rf", self.path], output=lambda _line: None)


@contextmanager
def _workdir(target: Target) -> Iterator[_Workdir]:
    work = _Workdir(target)
    try:
        yield work
    finally:
        work.remove()


def _one_line(text: str) -> str:
    """`text` with control characters (newlines above all) turned into spaces, so a step's
    name can stand in the script's comment line and never become a line of its own."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", text)


def _script(
    work: _Workdir, body: str, env: Mapping[str, str], title: str, *, cd_home: bool = True
) -> str:
    """The script a step or check runs as: names and values are data, only `body` is code."""
    check_env_names(env, f" in {_one_line(title)!r}")
    lines = [
        "#!/bin/bash",
        f"# ccloudvm: {_one_line(title)}",
        f"{WORKDIR_VAR}={shlex.quote(work.path)}",
    ]
    lines.extend(f"export {key}={shlex.quote(value)}" for key, value in env.items())
    if cd_home:
        lines.append('cd "${HOME:-/}"')
    return "\n".join(lines) + "\n" + body + ("" if body.endswith("\n") else "\n")


def _upload_downloads(
    target: Target, work: _Workdir, uploads: Sequence[Download], fetch: Fetch
) -> None:
    for item in uploads:
        if not item.cache_path.is_file():
            fetch(item.url, item.cache_path, public_only=item.restricted)
        target.put_file(item.cache_path, f"{work.path}/{item.staging_name}", mode=0o644)


def _step_body(target: Target, work: _Workdir, index: int, step: ProvisionStep) -> str:
    if step.script is not None:
        return step.script
    if step.copy_src is None or step.copy_dest is None:
        raise CcloudvmError(f"provision step {step.name!r} has nothing to run")
    staged = f"copy-{index}"
    target.put_file(step.copy_src, f"{work.path}/{staged}", mode=0o600)
    mode = f"{step.copy_mode:04o}"
    return f'install -D -m {mode} "${WORKDIR_VAR}"/{staged} {shell_path(step.copy_dest)}\n'


def _result(name: str, ok: bool, seconds: float, words: tuple[str, str] = ("OK", "FAIL")) -> None:
    word = f"[green]{words[0]}[/green]" if ok else f"[red]{words[1]}[/red]"
    ui.console.print(f"{_escape(name)} ... {word} ({seconds:.1f} s)", highlight=False)


def _escape(text: str) -> str:
    """A step name as plain text in a rich markup line."""
    from rich.markup import escape

    return escape(text)


def _show_tail(tail: Sequence[str], already_shown: bool) -> None:
    if already_shown or not tail:
        return
    ui.console.print(f"last {len(tail)} lines of output:", style="dim")
    for line in tail:
        ui.console.print(f"  {line}", style="dim", markup=False, highlight=False)


def run_steps(
    target: Target,
    steps: Sequence[ProvisionStep],
    *,
    env: Mapping[str, str] | None = None,
    verbose: bool = False,
    log: OutputSink | None = None,
    fetch: Fetch | None = None,
    failure_hint: str | None = None,
) -> None:
    """Run `steps` in order on `target`; the first failure raises StepFailed.

    `env` is exported in every step (on top of each step's own env). With `verbose` the
    output is printed dimmed as it comes; otherwise a spinner shows the latest line and
    the last lines are printed only if the step fails. `log` receives a header for each
    step, every line, and the step's result.
    """
    if not steps:
        return
    fetch = fetch or fetch_to_cache
    with _workdir(target) as work:
        for index, step in enumerate(steps, start=1):
            if log is not None:
                who = " (as root)" if step.sudo else ""
                log(f"==> step {index}/{len(steps)}: {step.name}{who}")
            start = time.monotonic()
            spinner = nullcontext(None) if verbose else ui.spinner(step.name)
            with spinner as status:
                sink = _Output(verbose, log, status)
                if verbose:
                    ui.console.print(f"{_escape(step.name)} ...", highlight=False)
                _upload_downloads(target, work, step.uploads, fetch)
                body = _step_body(target, work, index, step)
                step_env = {**(env or {}), **dict(step.env)}
                path = f"{work.path}/step-{index}.sh"
                target.put_text(_script(work, body, step_env, step.name), path, mode=0o700)
                code = target.run(["bash", "-eu", path], output=sink, sudo=step.sudo)
            seconds = time.monotonic() - start
            _result(step.name, code == 0, seconds)
            if log is not None:
                outcome = "OK" if code == 0 else f"FAIL (exit status {code})"
                log(f"<== step {index}/{len(steps)}: {step.name}: {outcome} ({seconds:.1f} s)")
            if code != 0:
                _show_tail(sink.tail, verbose)
                raise StepFailed(step.name, code, sink.tail, failure_hint)


def run_checks(
    target: Target,
    checks: Sequence[Check],
    *,
    env: Mapping[str, str] | None = None,
    log: OutputSink | None = None,
) -> tuple[int, int]:
    """Run every check, print each as `name ... PASS` or `FAIL` (with its output), then
    `N passed, N failed`."""
    passed = failed = 0
    if checks:
        with _workdir(target) as work:
            for index, check in enumerate(checks, start=1):
                if log is not None:
                    log(f"==> check {index}: {check.name}")
                start = time.monotonic()
                sink = _Output(False, log, None)
                path = f"{work.path}/check-{index}.sh"
                script = _script(work, check.run, dict(env or {}), f"check {check.name}")
                target.put_text(script, path, mode=0o700)
                code = target.run(["bash", "-eu", path], output=sink, sudo=check.sudo)
                _result(check.name, code == 0, time.monotonic() - start, ("PASS", "FAIL"))
                if code == 0:
                    passed += 1
                else:
                    failed += 1
                    _show_tail(sink.tail, False)
    ui.out.print(f"{passed} passed, {failed} failed", highlight=False)
    return passed, failed
