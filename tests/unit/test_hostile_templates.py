"""Hostile workloads from a URL (issue 8 part 1): no template can read, write or run
anything of the host's, nor hang or flood it; host mounts, drives, files and CA
certificate files are refused for everything a URL workload inherits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.core.hostinfo import HostUser
from ccloudvm.state.paths import StateDir
from ccloudvm.workloads import templating
from ccloudvm.workloads.definition import load_workload
from ccloudvm.workloads.templating import TemplateContext
from tests.support.httpserver import serve_directory


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.ensure()
    s.user_workloads.mkdir()
    return s


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    with serve_directory(root) as (base_url, _server):
        yield base_url.rstrip("/"), root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("TOPSECRET")
    return path


def load_url(served: tuple[str, Path], state: StateDir, ctx: TemplateContext, text: str) -> str:
    url, root = served
    (root / "w.yaml").write_text(text)
    w = load_workload(state, f"{url}/w.yaml", ctx)
    return "\n".join(s.script or "" for s in w.provision)


def step(expression: str) -> str:
    return f"image: x\nprovision:\n  - name: s\n    run: {expression!r}\n"


ROOTS = ["host.home", "host.gopath", "user.home", "download", "proxy_env", "vars", "proxies"]
METHODS = [
    "joinpath('{p}').read_text()",
    "joinpath('{p}').read_bytes()",
    "joinpath('{p}').write_text('x')",
    "joinpath('{p}').write_bytes(b'x')",
    "joinpath('{p}').open().read()",
    "joinpath('{p}').exists()",
    "joinpath('{p}').stat()",
    "joinpath('{p}').unlink()",
    "joinpath('{p}').rmdir()",
    "joinpath('{p}').mkdir()",
    "joinpath('{p}').touch()",
    "joinpath('{p}').chmod(0)",
    "joinpath('{p}').rename('{p}.moved')",
    "joinpath('{p}').symlink_to('/')",
    "iterdir()",
    "glob('*')",
    "cache_dir.joinpath('{p}').read_text()",
    "__self__.cache_dir",
    "__closure__",
    "__globals__",
]


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("method", METHODS)
def test_no_value_in_the_context_reaches_host_files(
    root: str,
    method: str,
    served: tuple[str, Path],
    state: StateDir,
    ctx: TemplateContext,
    secret: Path,
) -> None:
    expression = "{{ " + root + "." + method.format(p=secret) + " }}"
    with pytest.raises(UsageError) as info:
        load_url(served, state, ctx, step(expression))
    message = info.value.message
    assert "\n" not in message
    assert "TOPSECRET" not in message
    assert secret.read_text() == "TOPSECRET"
    assert not Path(f"{secret}.moved").exists()


def test_host_values_are_plain_strings(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext, host: HostUser
) -> None:
    script = load_url(
        served, state, ctx, step("{{ host.home }} {{ host.gopath }} {{ host.name | upper }}")
    )
    assert f"{host.home} {host.gopath} ALICE" in script
    names = templating.variables(ctx, {}, lambda *a: "")
    assert isinstance(names["host"], dict)
    assert all(isinstance(v, (str, int, bool)) for v in names["host"].values())
    assert not hasattr(names["download"], "cache_dir")


def test_every_value_a_template_sees_is_plain_data_or_a_documented_helper(
    ctx: TemplateContext,
) -> None:
    """The whole context, walked: no Path (nor any other object with methods) anywhere, for
    a VM, bare metal, with mounts and extra values; the only callables are the helpers."""
    from dataclasses import replace

    from ccloudvm.core.specs import MountSpec

    mount = MountSpec(host_path=Path("/srv/x"), guest_path="/x", tag="x")
    contexts = [ctx, replace(ctx, bare_metal=True, mounts=[mount], extra={"p": Path("/etc")})]
    for context in contexts:
        names = templating.variables(context, {"v": [Path("/tmp"), {"k": 1}]}, lambda *a: "")
        callables = {key for key, value in names.items() if callable(value)}
        assert callables == {"download", "proxy_env", "proxy_vars"}
        stack = [value for key, value in names.items() if key not in callables]
        while stack:
            value = stack.pop()
            if isinstance(value, dict):
                assert all(isinstance(key, str) for key in value)
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
            else:
                assert value is None or type(value) in (str, int, float, bool), repr(value)


def test_local_workloads_get_plain_values_too(
    state: StateDir, ctx: TemplateContext, secret: Path
) -> None:
    (state.user_workloads / "l.yaml").write_text(
        step("{{ host.home.joinpath('" + str(secret) + "').read_text() }}")
    )
    with pytest.raises(UsageError, match="joinpath"):
        load_workload(state, "l", ctx)


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ lipsum.__globals__ }}",
        "{{ range.__self__ }}",
        "{{ config }}",
        "{{ request }}",
        "{{ download.__globals__ }}",
        "{{ proxy_vars.__globals__['__builtins__'] }}",
        "{{ ''.format.__self__.__class__ }}",
        "{{ vars.__class__.__init__ }}",
    ],
)
def test_known_sandbox_escapes_stay_closed(
    expression: str, served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    with pytest.raises(UsageError) as info:
        load_url(served, state, ctx, step(expression))
    assert "\n" not in info.value.message
    for leak in ("<class", "<module", "<built-in", "<function", "<jinja2"):
        assert leak not in info.value.message


@pytest.mark.parametrize(
    ("expression", "match"),
    [
        ("{{ 9**999999999 }}", "too large"),
        ("{{ (10**100)**100 }}", "too large"),
        ("{{ 'x' * 10**10 }}", "MiB"),
        ("{{ [1] * 10**9 }}", "MiB"),
        ("{% for i in range(10**6) %}xxxxxxxxxx{% endfor %}", "MiB|range|large"),
    ],
)
def test_huge_arithmetic_and_output_are_refused(
    expression: str, match: str, served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    with pytest.raises(UsageError, match=match) as info:
        load_url(served, state, ctx, step(expression))
    assert "\n" not in info.value.message
    assert "w.yaml" in info.value.message or "workload w" in info.value.message


def test_render_time_limit(
    monkeypatch: pytest.MonkeyPatch, served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    monkeypatch.setattr(templating, "RENDER_SECONDS", 0.2)
    loop = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(UsageError, match="longer than") as info:
        (state.user_workloads / "w.yaml").write_text(step(loop))  # range() is URL-refused
        load_workload(state, "w", ctx)
    assert "workload w" in info.value.message


def test_inherited_mounts_are_refused(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    with pytest.raises(UsageError, match=r"go\.yaml.*inherited by .*w\.yaml.*cannot share host"):
        load_url(served, state, ctx, "inherits: go\n")


def test_inherited_drives_copies_and_ca_files_are_refused(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext, tmp_path: Path, secret: Path
) -> None:
    url, _root = served
    parent = state.user_workloads
    (parent / "drv.yaml").write_text(f"image: x\nvm: {{drives: [{{path: {tmp_path}/d.img}}]}}\n")
    (parent / "cp.yaml").write_text(
        f"image: x\nprovision: [{{name: c, copy: {{src: {secret}, dest: /tmp/s}}}}]\n"
    )
    (parent / "ca.yaml").write_text(f"image: x\nca_certs: [{secret}]\n")
    for name, match in (
        ("drv", "share host drives"),
        ("cp", "cannot read files"),
        ("ca", "cannot read files"),
    ):
        with pytest.raises(UsageError, match=match) as info:
            load_url(served, state, ctx, f"inherits: {name}\n")
        assert "from a URL" in info.value.message
    # the same parents are fine for a local workload
    assert load_workload(state, "cp", ctx).provision[0].copy_src == secret


def test_url_workload_own_copies_and_ca_files_are_refused(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext, secret: Path
) -> None:
    with pytest.raises(UsageError, match="cannot read files from this host"):
        load_url(served, state, ctx, f"image: x\nca_certs: [{secret}]\n")
    with pytest.raises(UsageError, match="cannot read files from this host"):
        load_url(
            served,
            state,
            ctx,
            f"image: x\nprovision: [{{name: c, copy: {{src: {secret}, dest: /tmp/s}}}}]\n",
        )
