"""Workloads: lookup order, validation errors, inheritance and merging, rendering, sandbox."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ccloudvm.app.provision import StepFailed, run_steps
from ccloudvm.core.errors import NotFoundError, UsageError
from ccloudvm.core.hostinfo import HostUser
from ccloudvm.core.specs import PortSpec
from ccloudvm.guest.proxy import ProxySettings, for_guest
from ccloudvm.remote.local import LocalTarget
from ccloudvm.state.paths import StateDir, resource_dir
from ccloudvm.workloads.definition import (
    find_workload,
    list_workloads,
    load_workload,
    merge_config,
    render_workload_yaml,
)
from ccloudvm.workloads.templating import TemplateContext
from tests.support.httpserver import serve_directory

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
BUNDLED = ("debian", "ubuntu", "docker", "go", "ciao")


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.ensure()
    s.user_workloads.mkdir()
    return s


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ lookup


def test_name_lookup_prefers_the_users_folder_then_bundled(state: StateDir) -> None:
    write(state.user_workloads, "debian.yaml", "description: mine\nimage: x\n")
    write(state.user_workloads, "mine.yaml", "description: only mine\nimage: x\n")
    assert find_workload(state, "debian").origin == str(state.user_workloads / "debian.yaml")
    assert find_workload(state, "mine").origin == str(state.user_workloads / "mine.yaml")
    assert find_workload(state, "ubuntu").origin == str(resource_dir("templates") / "ubuntu.yaml")


def test_a_users_workload_overrides_a_bundled_name_everywhere(
    state: StateDir, ctx: TemplateContext
) -> None:
    # Your own debian.yaml may extend the bundled one by inheriting its own name...
    write(
        state.user_workloads,
        "debian.yaml",
        "description: my debian\ninherits: debian\nprovision: [{name: mine, run: 'true'}]\n",
    )
    mine = load_workload(state, "debian", ctx)
    assert mine.description == "my debian" and mine.image == "debian-12"
    assert [s.name for s in mine.provision] == ["mine"]
    # ...and bundled workloads that inherit debian get yours too.
    docker = load_workload(state, "docker", ctx)
    assert [s.name for s in docker.provision] == ["mine", "Install Docker"]


def test_paths_are_taken_as_given(state: StateDir, tmp_path: Path) -> None:
    path = write(tmp_path / "w", "debian.yaml", "image: x\n")
    assert find_workload(state, str(path)).origin == str(path)


def test_unknown_name_suggests_a_close_one(state: StateDir) -> None:
    with pytest.raises(NotFoundError, match="no workload named 'debain'") as info:
        find_workload(state, "debain")
    assert "did you mean 'debian'" in str(info.value)
    assert info.value.exit_code == 2


def test_missing_path_is_not_found(state: StateDir, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        find_workload(state, str(tmp_path / "nope.yaml"))


def test_list_shows_bundled_and_user_workloads(state: StateDir) -> None:
    write(state.user_workloads, "mine.yaml", "description: my own\nimage: x\n")
    write(state.user_workloads, "debian.yaml", "description: shadowed\nimage: x\n")
    rows = {(name, origin): description for name, description, origin in list_workloads(state)}
    names = [name for name, _ in rows]
    for name in BUNDLED:
        assert name in names
    assert rows[("mine", str(state.user_workloads / "mine.yaml"))] == "my own"
    assert rows[("debian", str(state.user_workloads / "debian.yaml"))] == "shadowed"
    bundled = rows[("debian", str(resource_dir("templates") / "debian.yaml"))]
    assert bundled.startswith(f"(overridden by your {state.user_workloads / 'debian.yaml'})")
    order = [name for name, _ in rows]
    assert order.index("mine") < order.index("ubuntu")  # listed in lookup order


# ------------------------------------------------------------------ bundled workloads


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_workloads_load_with_and_without_proxies(
    name: str, state: StateDir, ctx: TemplateContext
) -> None:
    w = load_workload(state, name, ctx)
    assert w.image in ("debian-12", "ubuntu-24.04")
    assert w.description
    guest = for_guest(ProxySettings(http="http://127.0.0.1:3128"), hostname="vm1")
    proxied = load_workload(state, name, TemplateContext(ctx.host, "vm1", guest))
    paths = [f["path"] for f in proxied.user_data["write_files"]]
    assert "/etc/apt/apt.conf.d/90ccloudvm-proxy" in paths
    # the rendered YAML round-trips, so `workload show` output is valid YAML
    assert yaml.safe_load(render_workload_yaml(proxied))["name"] == name


def test_debian_stays_minimal(state: StateDir, ctx: TemplateContext) -> None:
    w = load_workload(state, "debian", ctx)
    assert w.provision == () and w.user_data == {} and w.checks == ()


def test_ciao_workload_shape(state: StateDir, ctx: TemplateContext, host: HostUser) -> None:
    w = load_workload(state, "ciao", ctx)
    assert w.chain == ("debian", "docker", "go", "ciao")  # debian once, though both inherit it
    assert w.needs_nested_vm is True
    assert (w.vm.mem_mib, w.vm.cpus) == (4096, 2)
    (mount,) = w.vm.mounts
    assert (mount.tag, mount.host_path, mount.guest_path) == (
        "hostgo",
        host.gopath,
        str(host.gopath),
    )
    names = [s.name for s in w.provision]
    assert names[:3] == ["Install Docker", "Install Go", "Install ciao's build and cluster tools"]
    assert len(names) == len(set(names))  # no step twice
    checks = [c.name for c in w.checks]
    assert checks[:2] == ["docker daemon answers", "user is in the docker group"]
    assert "go toolchain runs" in checks and len(checks) == len(set(checks))
    images = next(s for s in w.provision if s.uploads)
    assert all(u.dest.startswith("~/local/") for u in images.uploads)
    assert all(u.cache_path.parent == state.cache / "downloads" for u in images.uploads)
    packages = next(s for s in w.provision if "tools" in s.name).script or ""
    for package in ("gcc", "make", "qemu-system-x86", "xorriso", "dnsmasq", "ceph-common"):
        assert package in packages
    assert set(w.cluster) == {"setup", "verify", "bat", "cleanup", "env"}
    assert str(host.gopath) in w.cluster["setup"]
    identity = next(s for s in w.provision if "git identity" in s.name).script or ""
    assert "'Alice Example'" in identity and "alice@example.org" in identity


def test_bare_metal_skips_vm_only_steps_and_uses_the_host_user(
    state: StateDir, ctx: TemplateContext
) -> None:
    metal = TemplateContext(ctx.host, "vm1", ProxySettings(), bare_metal=True)
    names = [s.name for s in load_workload(state, "ciao", metal).provision]
    assert "Message of the day" not in names
    docker = next(s for s in load_workload(state, "docker", metal).provision)
    assert "usermod -aG docker alice" in (docker.script or "")
    docker_vm = next(s for s in load_workload(state, "docker", ctx).provision)
    assert "usermod -aG docker alice" in (docker_vm.script or "")  # non-root host: same name


def test_bundled_shell_is_shellcheck_clean(state: StateDir, ctx: TemplateContext) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is needed for this test (apt-get install shellcheck)"
    for name in BUNDLED:
        w = load_workload(state, name, ctx)
        scripts = [s.script for s in w.provision if s.script] + [c.run for c in w.checks]
        for script in scripts:
            result = subprocess.run(  # noqa: S603 - fixed argv
                [shellcheck, "-s", "bash", "-"], input=script, capture_output=True, text=True
            )
            assert result.returncode == 0, f"{name}:\n{script}\n{result.stdout}"


# ------------------------------------------------------------------ merging


def test_merge_config_maps_recurse_lists_concatenate_child_scalars_win() -> None:
    parent = {"a": {"x": 1, "l": [1]}, "packages": ["git"], "s": "p"}
    child = {"a": {"y": 2, "l": [2]}, "packages": ["make"], "s": "c"}
    assert merge_config(parent, child) == {
        "a": {"x": 1, "y": 2, "l": [1, 2]},
        "packages": ["git", "make"],
        "s": "c",
    }


def test_inheritance_merges_every_part(state: StateDir, ctx: TemplateContext) -> None:
    folder = state.user_workloads
    write(
        folder,
        "base.yaml",
        """
description: base
image: debian-12
needs_nested_vm: true
vm:
  mem: 1G
  cpus: 1
  disk: 10
  ports: ["8080:80", 9000]
  mounts: [{host: /srv/a, guest: /a, tag: data}, {host: /srv/b, guest: /b, tag: keep}]
  drives: [{path: /d1.img}]
vars: {who: base, deep: {a: 1}}
user_data: |
  packages: [git]
  write_files: [{path: /etc/base, content: "{{ vars.who }}"}]
provision:
  - {name: base step, run: echo base}
checks:
  - {name: base check, run: "true"}
cluster:
  network: {lease_time: 1h, bridge: br0}
  setup: echo base setup
  cleanup: echo base cleanup
""",
    )
    write(
        folder,
        "child.yaml",
        """
inherits: base
vm:
  mem: 2048
  ports: ["8081:80"]
  mounts: [{host: /srv/c, guest: /c, tag: data}]
  drives: [{path: /d1.img, format: raw}, {path: /d2.img}]
vars: {who: child, deep: {b: 2}}
needs_nested_vm: false
user_data:
  packages: [make]
provision:
  - {name: child step, run: "echo {{ vars.who }} {{ vars.deep.a }}{{ vars.deep.b }}"}
checks:
  - {name: child check, run: "true"}
cluster:
  network: {bridge: br1}
  setup: echo child setup
""",
    )
    w = load_workload(state, "child", ctx)
    assert w.description == "base"  # inherited when the child has none
    assert w.chain == ("base", "child")
    assert w.needs_nested_vm is False
    assert (w.vm.mem_mib, w.vm.cpus, w.vm.disk_gib) == (2048, 1, 10)
    assert w.vm.ports == (PortSpec(8081, 80), PortSpec(9000, 9000))
    assert [(m.tag, str(m.host_path)) for m in w.vm.mounts] == [
        ("data", "/srv/c"),
        ("keep", "/srv/b"),
    ]
    assert [(str(d.path), d.format) for d in w.vm.drives] == [
        ("/d1.img", "raw"),
        ("/d2.img", "qcow2"),
    ]
    assert w.user_data["packages"] == ["git", "make"]
    # the parent's templates see the merged vars too
    assert w.user_data["write_files"] == [{"path": "/etc/base", "content": "child"}]
    assert [s.name for s in w.provision] == ["base step", "child step"]
    assert (w.provision[1].script or "").strip() == "echo child 12"
    assert [c.name for c in w.checks] == ["base check", "child check"]
    assert w.cluster == {"setup": "echo child setup", "cleanup": "echo base cleanup"}
    assert w.cluster_network == {"lease_time": "1h", "bridge": "br1"}


def test_inherits_by_relative_path(state: StateDir, ctx: TemplateContext, tmp_path: Path) -> None:
    write(tmp_path / "w", "parent.yaml", "image: ubuntu-24.04\n")
    child = write(tmp_path / "w", "child.yaml", "inherits: ./parent.yaml\n")
    assert load_workload(state, str(child), ctx).image == "ubuntu-24.04"


def test_context_variables_reach_templates(state: StateDir, host: HostUser) -> None:
    write(
        state.user_workloads,
        "vars.yaml",
        """
image: x
user_data: |
  runcmd:
    - [echo, "{{ user.name }} {{ user.uid }} {{ user.gid }} {{ user.home }}"]
    - [echo, "{{ host.name }} {{ host.gopath }} {{ host.git_email }} {{ instance.name }}"]
    - [echo, "{{ proxies.http }} {{ proxy_vars() }}"]
    - [echo, "{{ mounts[0].tag }} {{ vars.extra_one }}"]
""",
    )
    from ccloudvm.core.specs import MountSpec

    ctx = TemplateContext(
        host=host,
        instance_name="vm7",
        proxies=ProxySettings(http="http://10.0.2.2:3128"),
        mounts=[MountSpec(Path("/x"), "/x", "tagx")],
        extra={"extra_one": "E"},
    )
    w = load_workload(state, "vars", ctx, propagate_proxy=True)
    runcmd = [line[1] for line in w.user_data["runcmd"] if line[0] == "echo"]
    assert runcmd[0] == "alice 1234 1234 /home/alice"
    assert runcmd[1] == f"alice {host.gopath} alice@example.org vm7"
    assert (
        runcmd[2]
        == "http://10.0.2.2:3128 http_proxy=http://10.0.2.2:3128 HTTP_PROXY=http://10.0.2.2:3128"
    )
    assert runcmd[3] == "tagx E"


def test_go_and_ciao_on_a_root_host_use_the_guest_users_own_gopath(state: StateDir) -> None:
    # The guest user of a root host is ccloudvm, who cannot enter the guest's /root.
    root = HostUser("root", 0, 0, "root", Path("/root"), Path("/root/go"), "", "")
    w = load_workload(state, "ciao", TemplateContext(root, "vm1", ProxySettings()))
    (mount,) = w.vm.mounts
    assert (mount.tag, str(mount.host_path), mount.guest_path) == (
        "hostgo",
        "/root/go",
        "/home/ccloudvm/go",
    )
    files = {f["path"]: f["content"] for f in w.user_data["write_files"]}
    assert "GOPATH=/home/ccloudvm/go\n" in files["/etc/environment"]
    assert "export GOPATH=/home/ccloudvm/go\n" in files["/etc/profile.d/ccloudvm-go.sh"]
    fetch = next(s for s in w.provision if s.name == "Fetch ciao into GOPATH")
    assert not fetch.sudo
    assert "src=/home/ccloudvm/go/src/github.com/ciao-project/ciao" in (fetch.script or "")
    assert "/root" not in (fetch.script or "")
    checks = {c.name: c.run for c in w.checks}
    assert checks["GOPATH is set"].strip() == 'test "${GOPATH:-}" = /home/ccloudvm/go'
    assert checks["ciao source is in GOPATH"].strip() == (
        "test -d /home/ccloudvm/go/src/github.com/ciao-project/ciao"
    )
    # On bare metal the steps run as root itself, in root's own GOPATH.
    metal = TemplateContext(root, "vm1", ProxySettings(), bare_metal=True)
    fetch = next(s for s in load_workload(state, "ciao", metal).provision if "Fetch" in s.name)
    assert "src=/root/go/src/github.com/ciao-project/ciao" in (fetch.script or "")


def _git(*args: str | Path) -> str:
    return subprocess.run(  # noqa: S603 - fixed argv
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *map(str, args)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def test_ciao_is_fetched_at_the_pinned_commit(
    state: StateDir, host: HostUser, tmp_path: Path
) -> None:
    """The fetch step, run for real against a local repository with a newer commit on top
    of the pinned one: the checkout is the pinned commit; a failed fetch leaves nothing."""
    repo = tmp_path / "ciao.git"
    _git("init", "-q", repo)
    _git("-C", repo, "commit", "-q", "--allow-empty", "-m", "pinned")
    pinned = _git("-C", repo, "rev-parse", "HEAD")
    _git("-C", repo, "commit", "-q", "--allow-empty", "-m", "newer")
    write(state.user_workloads, "c3.yaml",
          f"inherits: ciao\nvars: {{ciao_repo: '{repo}', ciao_commit: {pinned}}}\n")  # fmt: skip
    metal = TemplateContext(host, "vm1", ProxySettings(), bare_metal=True)
    fetch = next(s for s in load_workload(state, "c3", metal).provision if "Fetch" in s.name)
    src = host.gopath / "src" / "github.com" / "ciao-project" / "ciao"
    run_steps(LocalTarget(), [fetch])
    assert _git("-C", src, "rev-parse", "HEAD") == pinned
    run_steps(LocalTarget(), [fetch])  # there already: left as it is
    assert _git("-C", src, "rev-parse", "HEAD") == pinned
    shutil.rmtree(src)
    write(state.user_workloads, "c3.yaml",
          f"inherits: ciao\nvars: {{ciao_repo: '{repo}', ciao_commit: {'0' * 40}}}\n")  # fmt: skip
    fetch = next(s for s in load_workload(state, "c3", metal).provision if "Fetch" in s.name)
    with pytest.raises(StepFailed):
        run_steps(LocalTarget(), [fetch])
    assert list(src.parent.iterdir()) == []  # no half checkout that a rerun would trust


def test_ciao_check_quotes_what_it_puts_in_the_shell(state: StateDir, tmp_path: Path) -> None:
    odd = HostUser("al", 1000, 1000, "al", tmp_path, Path("/home/al/my go;x"), "", "")
    write(state.user_workloads, "c2.yaml", "inherits: ciao\nvars: {ciao_package: 'a b/$(c)'}\n")
    w = load_workload(state, "c2", TemplateContext(odd, "vm1", ProxySettings()))
    run = next(c.run for c in w.checks if c.name == "ciao source is in GOPATH")
    assert run.strip() == "test -d '/home/al/my go;x/src/a b/$(c)'"


def test_root_host_gets_the_ccloudvm_guest_user(state: StateDir, tmp_path: Path) -> None:
    root = HostUser("root", 0, 0, "root", Path("/root"), Path("/root/go"), "", "")
    write(
        state.user_workloads,
        "u.yaml",
        "image: x\nuser_data: 'u: \"{{ user.name }}:{{ user.uid }}\"'\n",
    )
    w = load_workload(state, "u", TemplateContext(root, "vm1", ProxySettings()))
    assert w.user_data["u"] == "ccloudvm:1000"


# ------------------------------------------------------------------ proxies and CA certificates


def test_proxy_fragments_reach_every_consumer(state: StateDir, host: HostUser) -> None:
    guest = for_guest(
        ProxySettings(
            http="http://127.0.0.1:3128", https="http://127.0.0.1:3129", no_proxy=["corp"]
        ),
        hostname="vm1",
    )
    w = load_workload(state, "debian", TemplateContext(host, "vm1", guest))
    files = {f["path"]: f for f in w.user_data["write_files"]}
    env = files["/etc/environment"]
    assert env["append"] is True
    assert "http_proxy=http://10.0.2.2:3128" in env["content"]
    assert "HTTPS_PROXY=http://10.0.2.2:3129" in env["content"]
    assert "no_proxy=corp,10.0.2.2,127.0.0.1,localhost,vm1,10.0.2.15" in env["content"]
    apt = files["/etc/apt/apt.conf.d/90ccloudvm-proxy"]["content"]
    assert 'Acquire::http::Proxy "http://10.0.2.2:3128";' in apt
    assert 'Acquire::https::Proxy "http://10.0.2.2:3129";' in apt
    drop_in = files["/etc/systemd/system/docker.service.d/http-proxy.conf"]["content"]
    assert 'Environment="HTTPS_PROXY=http://10.0.2.2:3129"' in drop_in
    docker_client = files["/home/alice/.docker/config.json"]
    assert docker_client["defer"] is True  # the user does not exist yet at write_files time
    config = json.loads(docker_client["content"])
    assert config["proxies"]["default"]["httpProxy"] == "http://10.0.2.2:3128"
    assert "proxy = http://10.0.2.2:3129" in files["/etc/gitconfig"]["content"]
    assert (
        "export https_proxy=http://10.0.2.2:3129"
        in files["/etc/profile.d/ccloudvm-proxy.sh"]["content"]
    )
    assert "proxy=http://10.0.2.2:3129" in " ".join(w.user_data["bootcmd"][0])  # dnf, when present
    assert ["chown", "-R", "1234:1234", "/home/alice/.docker"] in w.user_data["runcmd"]


def test_no_proxy_propagation_leaves_the_guest_alone(state: StateDir, host: HostUser) -> None:
    guest = for_guest(ProxySettings(http="http://127.0.0.1:3128"), hostname="vm1")
    write(
        state.user_workloads,
        "p.yaml",
        "image: x\nprovision: [{name: s, run: 'echo {{ proxies.http }}.'}]\n",
    )
    w = load_workload(state, "p", TemplateContext(host, "vm1", guest), propagate_proxy=False)
    assert w.user_data == {}
    assert (w.provision[0].script or "").strip() == "echo ."


def test_ca_certificates_from_flag_and_workload(
    state: StateDir, ctx: TemplateContext, tmp_path: Path
) -> None:
    cert = write(tmp_path, "corp.pem", PEM)
    inline = "image: x\nca_certs:\n  - |\n" + textwrap.indent(PEM, "    ")
    write(state.user_workloads, "c.yaml", inline)
    w = load_workload(state, "c", ctx, ca_certs=[cert])
    assert w.ca_certs == (PEM,)  # the same certificate twice is installed once
    assert w.user_data["ca_certs"]["trusted"] == [PEM]


def test_a_file_that_is_not_a_certificate_is_refused(
    state: StateDir, ctx: TemplateContext, tmp_path: Path
) -> None:
    bad = write(tmp_path, "bad.pem", "hello\n")
    with pytest.raises(UsageError, match="not a PEM certificate"):
        load_workload(state, "debian", ctx, ca_certs=[bad])


# ------------------------------------------------------------------ bad input


def _load_bad(
    state: StateDir, ctx: TemplateContext, text: str, message: str
) -> tuple[Path, UsageError]:
    """Load `text` as the user's workload `bad`: it must fail as one line, exit status 2."""
    path = write(state.user_workloads, "bad.yaml", text)
    with pytest.raises(UsageError, match=message) as info:
        load_workload(state, "bad", ctx)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
    return path, info.value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image: x\nvm: {mem: 1\n", r"line 3: malformed YAML"),
        (
            "image: x\nprovison: []\n",
            r"line 2: provison: unknown field 'provison' \(did you mean 'provision'\?\)",
        ),
        (
            "image: x\nvm:\n  mems: 1\n",
            r"line 3: vm.mems: unknown field 'mems' \(did you mean 'mem'\?\)",
        ),
        ("image: x\nvm:\n  cpus: two\n", r"line 3: vm.cpus must be an integer, not 'two'"),
        ("image: x\nvm:\n  cpus: true\n", r"vm.cpus must be an integer"),
        ("image: x\nvm:\n  mem: lots\n", r"vm.mem must be a number or a size like 4G"),
        ("image: x\nneeds_nested_vm: yes please\n", r"needs_nested_vm must be true or false"),
        ("image: x\nprovision:\n  - {run: ls}\n", r"provision\[0\]: field 'name' is missing"),
        (
            "image: x\nprovision:\n  - {name: a, run: ls, script: b.sh}\n",
            r"exactly one of run, script, copy",
        ),
        (
            "image: x\nprovision:\n  - {name: a, run: ls, only: sometimes}\n",
            r"only must be vm or host",
        ),
        ("image: x\nchecks:\n  - {name: a}\n", r"exactly one of run, script"),
        (
            "image: x\nvm:\n  mounts: [{host: /a, guest: rel, tag: t}]\n",
            r"must be an absolute path",
        ),
        ("image: x\nvm:\n  ports: ['99999:1']\n", r"out of range"),
        ("- a\n- b\n", r"must be a YAML mapping"),
        ("description: no image\n", r"names no image"),
        ("image: x\ninherits: nothere\n", r"line 2: inherits: parent workload 'nothere' not found"),
        (
            "image: x\nuser_data: |\n  a: [1\n",
            r"user_data \(rendered\) line 2: malformed cloud-config YAML",
        ),
        ("image: x\nuser_data: '- 1'\n", r"cloud-config must be a YAML mapping"),
        (
            "image: x\nprovision:\n  - {name: a, copy: {src: nothere, dest: /x}}\n",
            r"file 'nothere' not found",
        ),
        (
            "image: x\nprovision:\n  - {name: a, script: provision/nothere.sh.j2}\n",
            r"template file 'provision/nothere.sh.j2' not found",
        ),
        (
            'image: x\nuser_data: \'{{ download("http://h/x", "/x") }}\'\n',
            r"download\(\) can only be used in provision steps",
        ),
    ],
)
def test_bad_input_is_one_clear_usage_error(
    text: str, message: str, state: StateDir, ctx: TemplateContext
) -> None:
    path, error = _load_bad(state, ctx, text, message)
    if "line" in message:
        assert str(path) in error.message


def test_undefined_variable_names_variable_and_template(
    state: StateDir, ctx: TemplateContext
) -> None:
    write(
        state.user_workloads,
        "u.yaml",
        "image: x\nprovision:\n  - name: s\n    run: |\n      echo ok\n      echo {{ nosuch }}\n",
    )
    with pytest.raises(UsageError, match=r"undefined template variable 'nosuch'") as info:
        load_workload(state, "u", ctx)
    assert "u.yaml line 5: provision[0].run" in info.value.message


def test_undefined_variable_in_a_template_file_names_the_file(
    state: StateDir, ctx: TemplateContext
) -> None:
    write(state.user_workloads / "provision", "s.sh.j2", "echo {{ vars.missing }}\n")
    write(
        state.user_workloads,
        "u.yaml",
        "image: x\nprovision:\n  - {name: s, script: provision/s.sh.j2}\n",
    )
    with pytest.raises(UsageError, match=r"template provision/s.sh.j2.*'missing'"):
        load_workload(state, "u", ctx)


def test_template_syntax_error_points_into_the_workload_file(
    state: StateDir, ctx: TemplateContext
) -> None:
    write(state.user_workloads, "s.yaml", "image: x\nuser_data: |\n  a: 1\n  b: {{ oops\n")
    with pytest.raises(UsageError, match=r"workload line 4"):
        load_workload(state, "s", ctx)


def test_inheritance_cycle_is_named(state: StateDir, ctx: TemplateContext) -> None:
    write(state.user_workloads, "a.yaml", "image: x\ninherits: b\n")
    write(state.user_workloads, "b.yaml", "inherits: c\n")
    write(state.user_workloads, "c.yaml", "inherits: b\n")
    with pytest.raises(UsageError, match=r"inheritance cycle: b -> c -> b"):
        load_workload(state, "a", ctx)
    write(state.user_workloads, "self.yaml", "image: x\ninherits: self\n")
    with pytest.raises(UsageError, match=r"inheritance cycle: self -> self"):
        load_workload(state, "self", ctx)


# ------------------------------------------------------------------ workloads from URLs


@pytest.fixture
def served(tmp_path: Path, no_proxy_env: None) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    with serve_directory(root) as (base_url, _server):
        yield base_url.rstrip("/"), root


def test_url_workload_loads_and_inherits_by_name_and_relative_url(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    url, root = served
    write(root, "mid.yaml", "inherits: debian\nprovision: [{name: mid, run: echo mid}]\n")
    write(
        root,
        "top.yaml",
        "description: from the web\ninherits: mid.yaml\nprovision: [{name: top, run: 'echo {{ user.name }}'}]\n",
    )
    w = load_workload(state, f"{url}/top.yaml", ctx)
    assert w.origin == f"{url}/top.yaml"
    assert w.chain == ("debian", "mid", "top")
    assert [s.name for s in w.provision] == ["mid", "top"]
    assert (w.provision[1].script or "").strip() == "echo alice"


def test_url_workload_renders_in_the_sandbox(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    url, root = served
    write(
        root, "evil.yaml", "image: x\nprovision: [{name: s, run: \"{{ ''.__class__.__mro__ }}\"}]\n"
    )
    with pytest.raises(UsageError, match="unsafe template access"):
        load_workload(state, f"{url}/evil.yaml", ctx)
    # the same template from a local file is not sandboxed (and so renders)
    write(
        state.user_workloads,
        "local.yaml",
        "image: x\nprovision: [{name: s, run: \"{{ ''.__class__.__mro__ }}\"}]\n",
    )
    assert "object" in (load_workload(state, "local", ctx).provision[0].script or "")


def test_url_workload_cannot_read_host_files(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    url, root = served
    write(
        root,
        "copy.yaml",
        "image: x\nprovision: [{name: s, copy: {src: /etc/hostname, dest: /x}}]\n",
    )
    with pytest.raises(UsageError, match="cannot read files from this host"):
        load_workload(state, f"{url}/copy.yaml", ctx)


def test_url_workload_cannot_mount_host_folders(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    url, root = served
    write(root, "m.yaml", "image: x\nvm:\n  mounts: [{host: '~', guest: /h}]\n")
    with pytest.raises(UsageError, match="cannot share host mounts"):
        load_workload(state, f"{url}/m.yaml", ctx)
    # nor through a parent's mounts: inherits: go would share the host's GOPATH (issue 8)
    write(root, "g.yaml", "inherits: go\n")
    with pytest.raises(UsageError, match=r"inherited by .*g\.yaml \(from a URL\) cannot share"):
        load_workload(state, f"{url}/g.yaml", ctx)


def test_url_that_cannot_be_fetched(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    url, _root = served
    with pytest.raises(UsageError, match="cannot fetch workload") as info:
        load_workload(state, f"{url}/missing.yaml", ctx)
    assert info.value.exit_code == 2


# ------------------------------------------------------------------ show


def test_show_prints_the_merged_rendered_workload(state: StateDir, ctx: TemplateContext) -> None:
    text = render_workload_yaml(load_workload(state, "go", ctx))
    data = yaml.safe_load(text)
    assert data["inherits"] == "debian -> go"
    assert data["vm"]["mounts"][0]["tag"] == "hostgo"
    assert data["provision"][0]["name"] == "Install Go"
    assert "apt-get install" in data["provision"][0]["run"]
    assert "run: |" in text  # scripts are shown as readable blocks


def test_e2e_provision_workload_is_valid_and_cheap(state: StateDir, ctx: TemplateContext) -> None:
    path = Path(__file__).resolve().parents[1] / "workloads" / "e2e-provision.yaml"
    w = load_workload(state, str(path), ctx)
    assert w.chain == ("debian", "e2e-provision")
    assert [f["path"] for f in w.user_data["write_files"]] == [
        "/var/lib/ccloudvm-e2e/cloud-config-marker"
    ]
    assert len(w.provision) == 2 and len(w.checks) == 1
    assert dict(w.provision[1].env) == {"E2E_GREETING": "hello from vm1"}
    assert not any("apt-get" in (s.script or "") for s in w.provision)


# ------------------------------------------------------------------ merging: keys, several parents


def test_untagged_mounts_of_parent_and_child_both_survive(
    state: StateDir, ctx: TemplateContext
) -> None:
    write(
        state.user_workloads,
        "p.yaml",
        "image: x\nvm:\n  mounts: [{host: /tmp, guest: /a}, {host: /srv/x, guest: /x, tag: data}]\n",
    )
    write(
        state.user_workloads,
        "c.yaml",
        "inherits: p\nvm:\n  mounts: [{host: /srv, guest: /b}, {host: /opt, guest: /x}]\n",
    )
    w = load_workload(state, "c", ctx)
    # /a and /b both stay; the child's /x replaces the parent's /x (same guest folder)
    # and keeps its tag; untagged mounts get free tags once everything is merged.
    assert [(str(m.host_path), m.guest_path, m.tag) for m in w.vm.mounts] == [
        ("/tmp", "/a", "mount0"),
        ("/opt", "/x", "data"),
        ("/srv", "/b", "mount1"),
    ]
    assert len({m.tag for m in w.vm.mounts}) == 3


def test_ports_merge_by_host_port_and_by_guest_port(state: StateDir, ctx: TemplateContext) -> None:
    write(state.user_workloads, "p.yaml", "image: x\nvm:\n  ports: ['8080:80', '9000:90', 22]\n")
    write(state.user_workloads, "c.yaml", "inherits: p\nvm:\n  ports: ['8080:443', '9001:90']\n")
    w = load_workload(state, "c", ctx)
    # 8080 can only be forwarded once: the child's wins; guest 90 moved to host port 9001.
    assert [str(p) for p in w.vm.ports] == ["8080:443", "9001:90", "22:22"]


def test_inherits_a_list_of_parents(state: StateDir, ctx: TemplateContext) -> None:
    folder = state.user_workloads
    write(
        folder,
        "root.yaml",
        "image: x\nvars: {who: root}\nprovision: [{name: root step, run: 'true'}]\n",
    )
    write(
        folder,
        "left.yaml",
        "inherits: root\ndescription: left\nvm: {mem: 1024, cpus: 1}\n"
        "vars: {who: left, l: 1}\nprovision: [{name: left step, run: 'true'}]\n",
    )
    write(
        folder,
        "right.yaml",
        "inherits: root\nvm: {mem: 2048}\nvars: {who: right}\n"
        "provision: [{name: right step, run: 'true'}]\n",
    )
    write(
        folder,
        "child.yaml",
        "inherits: [left, right]\nvm: {cpus: 2}\n"
        "provision: [{name: child step, run: 'echo {{ vars.who }} {{ vars.l }}'}]\n",
    )
    w = load_workload(state, "child", ctx)
    assert w.chain == ("root", "left", "right", "child")
    # the shared ancestor's step runs once, then each parent's in the order listed
    assert [s.name for s in w.provision] == ["root step", "left step", "right step", "child step"]
    assert (w.vm.mem_mib, w.vm.cpus) == (2048, 2)  # later parent over earlier, child over all
    assert w.description == "left"
    assert (w.provision[-1].script or "").strip() == "echo right 1"
    assert yaml.safe_load(render_workload_yaml(w))["inherits"] == "root -> left -> right -> child"


def test_a_cycle_through_a_list_of_parents_is_named(state: StateDir, ctx: TemplateContext) -> None:
    write(state.user_workloads, "a.yaml", "image: x\ninherits: [debian, b]\n")
    write(state.user_workloads, "b.yaml", "inherits: [a]\n")
    with pytest.raises(UsageError, match=r"inheritance cycle: a -> b -> a"):
        load_workload(state, "a", ctx)


def test_a_missing_parent_in_a_list_names_its_line(state: StateDir, ctx: TemplateContext) -> None:
    path = write(state.user_workloads, "m.yaml", "image: x\ninherits:\n  - debian\n  - debain\n")
    with pytest.raises(UsageError, match=r"parent workload 'debain' not found") as info:
        load_workload(state, "m", ctx)
    assert f"{path} line 4: inherits[1]" in info.value.message
    assert "did you mean 'debian'" in str(info.value)


# ------------------------------------------------------------------ more bad input


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image: x\nvm:\n  ports: [abc]\n", r"line 3: vm.ports\[0\]: invalid port 'abc'"),
        ("image: x\nvm:\n  ports:\n    - 1:99999\n", r"line 4: vm.ports\[0\]: port 99999"),
        ("image: x\ninherits: [debian, 3]\n", r"line 2: inherits\[1\] must be a workload name"),
        ("image: x\ninherits: {a: 1}\n", r"inherits must be a string or a list"),
        (
            "image: x\nvm:\n  drives: [{path: /d.img, format: 'raw,x=1'}]\n",
            r"vm.drives\[0\].format: 'raw,x=1' is not a disk format",
        ),
        ("image: x\nprovision: [{name: s, run: '{{ 1/0 }}'}]\n", r"ZeroDivisionError"),
        ("image: x\nuser_data: 'a: {{ \"x\" + 1 }}'\n", r"TypeError while rendering: can only"),
        (
            "image: x\nprovision: [{name: s, run: '{{ download(1) }}'}]\n",
            r"download\(\) missing 1 required positional argument",
        ),
    ],
)
def test_more_bad_input_is_one_clear_usage_error(
    text: str, message: str, state: StateDir, ctx: TemplateContext
) -> None:
    path, error = _load_bad(state, ctx, text, message)
    assert str(path) in error.message
    assert "--port" not in str(error)


def test_a_python_error_in_a_template_file_names_the_file_and_line(
    state: StateDir, ctx: TemplateContext
) -> None:
    write(state.user_workloads / "provision", "z.sh.j2", "echo ok\necho {{ 1 // 0 }}\n")
    write(
        state.user_workloads,
        "z.yaml",
        "image: x\nprovision: [{name: s, script: provision/z.sh.j2}]\n",
    )
    with pytest.raises(UsageError, match=r"provision/z.sh.j2 line 2\): ZeroDivisionError"):
        load_workload(state, "z", ctx)


# ------------------------------------------------------------------ URL workloads: immutable, no private downloads


@pytest.mark.parametrize(
    "expression",
    ["{{ vars.tenant_images.append(1) }}", "{{ proxies.env.clear() }}", "{{ vars.update(a=1) }}"],
)
def test_url_workload_cannot_change_shared_values(
    expression: str, served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    url, root = served
    # (not inherits: ciao, whose go parent mounts the host's GOPATH, refused for URLs)
    write(
        root,
        "mut.yaml",
        "inherits: debian\nvars: {tenant_images: [a]}\n"
        f"provision: [{{name: s, run: '{expression}'}}]\n",
    )
    with pytest.raises(UsageError, match="unsafe template access"):
        load_workload(state, f"{url}/mut.yaml", ctx)


def test_local_templates_cannot_change_what_other_templates_see(
    state: StateDir, ctx: TemplateContext
) -> None:
    write(
        state.user_workloads,
        "m.yaml",
        "image: x\nvars: {lst: [a]}\nprovision:\n"
        '  - {name: one, run: \'{{ vars.lst.append("b") }}{{ vars.lst | join(",") }}\'}\n'
        "  - {name: two, run: '{{ vars.lst | join(\",\") }}'}\n",
    )
    w = load_workload(state, "m", ctx)
    assert [(s.script or "").strip() for s in w.provision] == ["Nonea,b", "a"]


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x", "http://169.254.169.254/x",
     "http://192.168.1.1/x", "http://[::1]/x", "http://0.0.0.0/x"],
)  # fmt: skip
def test_url_workload_cannot_download_from_private_addresses(
    target: str, served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    url, root = served
    write(
        root,
        "dl.yaml",
        f'image: x\nprovision: [{{name: s, run: \'{{{{ download("{target}", "/x") }}}}\'}}]\n',
    )
    with pytest.raises(UsageError, match="may not fetch from .*loopback, link-local or private"):
        load_workload(state, f"{url}/dl.yaml", ctx)


def test_private_downloads_are_fine_from_local_and_public_ones_from_urls(
    served: tuple[str, Path], state: StateDir, ctx: TemplateContext
) -> None:
    url, root = served
    step = 'provision: [{name: s, run: \'{{ download("%s", "/x") }}\'}]\n'
    write(state.user_workloads, "local.yaml", "image: x\n" + step % "http://127.0.0.1:9/x")
    (item,) = load_workload(state, "local", ctx).provision[0].uploads
    assert item.restricted is False
    write(root, "pub.yaml", "image: x\n" + step % "http://93.184.216.34/img")
    (item,) = load_workload(state, f"{url}/pub.yaml", ctx).provision[0].uploads
    assert item.restricted is True and item.url == "http://93.184.216.34/img"
