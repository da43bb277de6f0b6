"""Template helpers and environments: proxy lines, download(), quoting, strictness, sandbox."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.core.hostinfo import HostUser
from ccloudvm.guest.proxy import ProxySettings
from ccloudvm.workloads.templating import (
    Downloads,
    TemplateContext,
    make_environment,
    render,
    shell_path,
    variables,
)


@pytest.fixture
def ctx() -> TemplateContext:
    host = HostUser("bob", 1000, 1000, "bob", Path("/home/bob"), Path("/home/bob/go"), "", "")
    proxies = ProxySettings(http="http://10.0.2.2:3128", no_proxy=["10.0.2.2", "localhost"])
    return TemplateContext(host=host, instance_name="vm1", proxies=proxies)


def _render(text: str, ctx: TemplateContext, downloads: Downloads, sandboxed: bool = False) -> str:
    env = make_environment(sandboxed)
    return render(env, source=text, label="test", names=variables(ctx, {}, downloads))


def test_proxy_env_lines_and_command_prefix(ctx: TemplateContext) -> None:
    out = _render("{{ proxy_env() }}\n{{ proxy_vars() }} apt-get update", ctx, Downloads(None, "t"))
    lines = out.splitlines()
    assert lines[:4] == [
        "http_proxy=http://10.0.2.2:3128",
        "HTTP_PROXY=http://10.0.2.2:3128",
        "no_proxy=10.0.2.2,localhost",
        "NO_PROXY=10.0.2.2,localhost",
    ]
    assert shlex.split(lines[4])[0] == "http_proxy=http://10.0.2.2:3128"
    assert lines[4].endswith(" apt-get update")


def test_helpers_are_empty_without_proxies(ctx: TemplateContext) -> None:
    bare = TemplateContext(ctx.host, "vm1", ProxySettings())
    assert (
        _render(
            "[{{ proxy_env() }}][{{ proxy_vars() }}][{{ proxies.enabled }}]",
            bare,
            Downloads(None, "t"),
        )
        == "[][][False]"
    )


def test_download_records_the_file_and_renders_an_install_line(
    ctx: TemplateContext, tmp_path: Path
) -> None:
    downloads = Downloads(tmp_path / "cache", "step")
    out = _render(
        '{{ download("https://example.org/a/img.qcow2?x=1", "~/local/i m g") }}', ctx, downloads
    )
    (item,) = downloads.items
    assert item.url == "https://example.org/a/img.qcow2?x=1"
    assert item.cache_path.parent == tmp_path / "cache"
    assert item.cache_path.name.endswith("-img.qcow2")
    assert (
        out == f'install -D -m 0644 "$CCLOUDVM_WORKDIR"/{item.staging_name} "$HOME"/\'local/i m g\''
    )


def test_download_refuses_non_http_urls(ctx: TemplateContext, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="only http"):
        _render('{{ download("file:///etc/shadow", "/x") }}', ctx, Downloads(tmp_path, "step"))


def test_shell_path_quotes_but_keeps_home() -> None:
    home = "/home/some one"
    cases = [("~/a b", f"{home}/a b"), ("/etc/x;y", "/etc/x;y"), ("~", home), ("~x", "~x")]
    for path, expected in cases:
        result = subprocess.run(  # noqa: S603 - fixed argv; the point is to test quoting
            ["bash", "-c", f"printf %s {shell_path(path)}"],
            capture_output=True,
            text=True,
            env={"HOME": home},
            check=True,
        )
        assert result.stdout == expected


def test_shquote_filter(ctx: TemplateContext) -> None:
    assert _render('{{ "it\'s" | shquote }}', ctx, Downloads(None, "t")) == "'it'\"'\"'s'"


def test_strict_undefined(ctx: TemplateContext) -> None:
    with pytest.raises(UsageError, match="test: undefined template variable 'nope'"):
        _render("{{ nope }}", ctx, Downloads(None, "t"))


def test_sandbox_blocks_python_internals_but_renders_normal_templates(ctx: TemplateContext) -> None:
    with pytest.raises(UsageError, match="unsafe"):
        _render("{{ ''.__class__.__mro__ }}", ctx, Downloads(None, "t"), sandboxed=True)
    with pytest.raises(UsageError, match="unsafe"):
        _render("{{ cycler.__init__.__globals__ }}", ctx, Downloads(None, "t"), sandboxed=True)
    assert (
        _render("{{ user.name }} {{ host.gopath }}", ctx, Downloads(None, "t"), sandboxed=True)
        == "bob /home/bob/go"
    )


def test_bare_metal_user_is_the_host_user() -> None:
    root = HostUser("root", 0, 0, "root", Path("/root"), Path("/root/go"), "", "")
    assert TemplateContext(root, "vm", ProxySettings()).user()["name"] == "ccloudvm"
    assert TemplateContext(root, "vm", ProxySettings(), bare_metal=True).user() == {
        "name": "root",
        "uid": 0,
        "gid": 0,
        "home": "/root",
        "gopath": "/root/go",
    }


def test_user_gopath_is_the_hosts_except_for_the_guest_of_a_root_host(
    ctx: TemplateContext,
) -> None:
    root = HostUser("root", 0, 0, "root", Path("/root"), Path("/root/go"), "", "")
    assert TemplateContext(root, "vm", ProxySettings()).user()["gopath"] == "/home/ccloudvm/go"
    assert ctx.user()["gopath"] == "/home/bob/go"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ok\n{{ 1/0 }}", r"^test \(line 2\): ZeroDivisionError while rendering: division by zero"),
        ('{{ "x" + 1 }}', r"TypeError while rendering: can only concatenate str"),
        ("{{ download(1) }}", r"download\(\) missing 1 required positional argument: 'dest'"),
        ("{{ vars.a.b }}", r"undefined template variable"),
    ],
)
def test_python_errors_while_rendering_are_one_usage_error(
    text: str, message: str, ctx: TemplateContext
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        _render(text, ctx, Downloads(None, "t"))
    assert info.value.exit_code == 2


def test_the_immutable_sandbox_refuses_changes(ctx: TemplateContext) -> None:
    names = variables(ctx, {"l": [1]}, Downloads(None, "t"))
    env = make_environment(True)
    for text in ("{{ vars.l.append(2) }}", "{{ proxies.env.update(a=1) }}"):
        with pytest.raises(UsageError, match="unsafe"):
            render(env, source=text, label="t", names=names)
    assert names["vars"]["l"] == [1]
