"""The cluster shell templates: rendered, shellcheck-clean, documented names and addresses,
the journal functions for real (on harmless entries), and ciao's fail-first check."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import yaml

from ccloudvm.cluster.network import ACTIONS, ClusterNetwork

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
WORKLOAD = REPO / "tests" / "workloads" / "cluster-test.yaml"

CONTEXT = {
    "user": {
        "name": "dev",
        "uid": 1000,
        "gid": 1000,
        "home": "/home/dev",
        "gopath": "/home/dev/go",
    },
    "host": SimpleNamespace(gopath=Path("/home/dev/go")),
}


def environment() -> jinja2.Environment:
    """Jinja2 set up as ccloudvm.workloads.templating.make_environment does."""
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


def render(name: str) -> str:
    return environment().get_template(name).render(**CONTEXT)


ALL = [
    "cluster/network-setup.sh.j2",
    "cluster/network-cleanup.sh.j2",
    *(f"cluster/test/{a}.sh.j2" for a in ("setup", "verify", "bat", "env")),
    *(f"cluster/ciao/{a}.sh.j2" for a in ACTIONS),
]


@pytest.mark.parametrize("name", ALL)
def test_rendered_script_is_shellcheck_clean(name: str, tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is needed (apt-get install shellcheck)"
    text = render(name)
    assert text.startswith("#!/bin/bash\n")
    assert "\nset -eu\n" in text
    script = tmp_path / "script.sh"
    script.write_text(text)
    result = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_test_workload_names_its_scripts_and_network() -> None:
    data = yaml.safe_load(WORKLOAD.read_text())
    assert data["inherits"] == "debian"
    cluster = data["cluster"]
    for action in ACTIONS:
        assert (TEMPLATES / cluster[action]).is_file()
    assert ClusterNetwork.from_mapping(cluster["network"]) == ClusterNetwork.from_mapping()


def test_shell_defaults_are_the_documented_ones() -> None:
    text = render("cluster/network-setup.sh.j2")
    defaults = dict(re.findall(r'"\$\{(CLUSTER_[A-Z_]+):-([^}]*)\}"', text))
    expected = ClusterNetwork.from_mapping().as_env()
    for key, value in expected.items():
        assert defaults[key] == value, key
    assert expected["CLUSTER_BRIDGE"] == "ciao_br"
    assert expected["CLUSTER_MACVLAN"] == "ciaovlan"
    assert expected["CLUSTER_GATEWAY"] == "198.51.100.1"
    assert expected["CLUSTER_SUBNET"] == "198.51.100.0/24"
    assert (expected["CLUSTER_DHCP_START"], expected["CLUSTER_DHCP_END"]) == (
        "198.51.100.50",
        "198.51.100.100",
    )
    assert expected["CLUSTER_LEASE_TIME"] == "12h"


def test_network_setup_commands() -> None:
    text = render("cluster/network-setup.sh.j2")
    assert 'ensure_link "$bridge" type bridge' in text
    assert 'ensure_link "$macvlan" link "$bridge" type macvlan mode bridge' in text
    assert 'ip addr replace "$gateway/$prefix" dev "$macvlan"' in text
    for option in (
        '--interface="$macvlan"',
        "--except-interface=lo",
        "--bind-interfaces",
        '--dhcp-range="$dhcp_start,$dhcp_end,$lease_time"',
        '--port="$dns_port"',
        '--pid-file="$run_dir/dnsmasq.pid"',
        '--dhcp-leasefile="$run_dir/dnsmasq.leases"',
        '--log-facility="$run_dir/dnsmasq.log"',
    ):
        assert option in text, option
    assert "ensure_sysctl net.ipv4.ip_forward 1" in text
    # NAT only when the caller says we are in a VM.
    nat = text.index('if [ "$nat" = 1 ]; then\n    out_if')
    assert text.index("-j MASQUERADE") > nat


def test_tenants_are_prefixed_with_the_cluster_name() -> None:
    text = render("cluster/test/setup.sh.j2")
    assert 'tenants="${CLUSTER_NAME}-t1 ${CLUSTER_NAME}-t2"' in text
    assert 'ensure_netns "$ns"' in text
    assert "busybox udhcpc" in text
    assert 'record pidfile busybox "$run_dir/httpd.pid"' in text


def _journal_script(
    tmp_path: Path, body: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the shared functions for real, as this (unprivileged) user, on harmless entries."""
    common = environment().get_template("cluster/_common.sh.j2").render()
    script = tmp_path / "journal.sh"
    script.write_text("#!/bin/bash\nset -eu\n" + common + "\n" + body)
    env = {
        **os.environ,
        "CLUSTER_NAME": "unit",
        "CLUSTER_STATE_DIR": str(tmp_path / "state"),
        **(extra or {}),
    }
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)


def test_journal_records_once_before_the_change_and_undoes_newest_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    made = tmp_path / "made"
    result = _journal_script(
        tmp_path,
        f"""
ensure_dir {made}
ensure_dir {made}
ensure_file {made}/a 0600 <<<hello
record exec rm -f {made}/order
record exec sh -c 'echo never'
""",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (state / "journal").read_text().splitlines()
    assert lines[:2] == [f"dir {made}", f"file {made}/a"]
    assert (made / "a").read_text() == "hello\n"
    undo = _journal_script(tmp_path, "undo_journal\n")
    assert undo.returncode == 0, undo.stdout
    assert not made.exists()
    assert not (state / "journal").exists()


def test_journal_keeps_what_could_not_be_undone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal").write_text(f"file {tmp_path}/x\nbogus entry\n")
    (tmp_path / "x").write_text("")
    undo = _journal_script(tmp_path, "undo_journal || echo FAILED\n")
    assert "could not undo: bogus entry" in undo.stdout
    assert "FAILED" in undo.stdout
    assert (state / "journal").read_text() == "bogus entry\n"
    assert not (tmp_path / "x").exists()


def test_cleanup_with_nothing_set_up_says_so(tmp_path: Path) -> None:
    script = tmp_path / "cleanup.sh"
    script.write_text(render("cluster/network-cleanup.sh.j2"))
    env = {**os.environ, "CLUSTER_NAME": "unit", "CLUSTER_STATE_DIR": str(tmp_path / "none")}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "DONE: nothing to clean up: cluster unit is not set up here"
    ]


def test_ciao_setup_checks_its_programs_before_changing_anything(tmp_path: Path) -> None:
    text = render("cluster/ciao/setup.sh.j2")
    first_check = text.index("require_ciao $ciao_tools")
    # Before it, only definitions: comments, assignments, functions (indented bodies).
    harmless = re.compile(
        r"(#|$|\s|[a-z_]+=|[A-Z]+=|export [a-z_]+=|[a-z0-9_]+\(\) \{|\}|\{|: |set -eu)"
    )
    for line in text[:first_check].splitlines():
        assert harmless.match(line), line
    # And for real: this machine has no ciao, so it stops at once with one line.
    script = tmp_path / "setup.sh"
    script.write_text(text)
    state = tmp_path / "state"
    env = {
        "PATH": "/usr/bin:/bin",
        "CLUSTER_NAME": "ciao",
        "CLUSTER_STATE_DIR": str(state),
        "HOME": str(tmp_path),
    }
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1
    assert errors[0].startswith(
        "ERROR: ciao cannot run here, missing: ciao-deploy ciao-scheduler ciao-controller "
        "ciao-launcher ciao go docker"
    )
    assert not state.exists()


STUB = """#!/bin/bash
echo "$(basename "$0") $*" >>"$STUB_LOG"
case "$(basename "$0") $1" in
    "id -u") echo 0 ;;
    "ip -o") ;;  # no address on this machine uses the cluster subnet
    "docker image") exit 1 ;;  # no image pulled yet
    "docker pull") [ "$PULL" = ok ] ;;
    "curl -fsSL")  # the OVMF download: curl -fsSL -o FILE URL
        [ "$OVMF" = ok ] || { echo partial >"$3"; exit 22; }
        echo ovmf >"$3" ;;
    "curl -fsS") [ "$REACH" = ok ] ;;
esac
"""


@pytest.mark.parametrize(
    ("ovmf", "pull", "reach", "error"),
    [
        ("fail", "ok", "ok", "cannot download https://download.clearlinux.org/image/OVMF.fd"),
        ("ok", "fail", "ok", "cannot pull the container image ceph/demo"),
        ("ok", "ok", "fail", "cannot reach https://download.clearlinux.org/latest"),
    ],
)
def test_ciao_setup_fetches_before_it_changes_anything(
    tmp_path: Path, ovmf: str, pull: str, reach: str, error: str
) -> None:
    """No internet here: OVMF, ceph/demo and Clear Linux's server are missing. With every
    program there (stand-ins that log their calls), setup stops at the first of them with
    one line, before the network, the journal or ciao-deploy; no partial file is left."""
    home, gopath, stubs = tmp_path / "home", tmp_path / "home" / "go", tmp_path / "bin"
    context = {**CONTEXT, "user": {**CONTEXT["user"], "home": str(home), "gopath": str(gopath)}}
    text = environment().get_template("cluster/ciao/setup.sh.j2").render(**context)
    tools = re.search(r'ciao_tools="([^"]+)"', text)
    assert tools
    for folder, names in (
        (stubs, [*tools.group(1).split(), "id", "iptables", "iptables-save", "nft"]),
        (gopath / "bin", ["ciao-deploy", "ciao-scheduler", "ciao-controller", "ciao-launcher", "ciao"]),
    ):  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_text(STUB)
            (folder / name).chmod(0o755)
    script, log, state = tmp_path / "setup.sh", tmp_path / "calls", tmp_path / "state"
    script.write_text(text)
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(home), "STUB_LOG": str(log),
        "CLUSTER_NAME": "ciao", "CLUSTER_STATE_DIR": str(state),
        "OVMF": ovmf, "PULL": pull, "REACH": reach,
    }  # fmt: skip
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: {error}"), result.stdout
    assert not state.exists()  # no journal, no state: nothing to undo
    calls = log.read_text().splitlines()
    assert any(c.startswith("curl -fsSL -o") for c in calls)  # the stand-ins did run
    changes = [c for c in calls if c.split()[0] in ("ciao-deploy", "systemctl", "sudo", "dnsmasq")]
    changes += [
        c for c in calls if c.startswith(("ip link", "ip addr", "iptables -", "docker run"))
    ]
    assert changes == [], changes
    local = home / "local"
    assert not (local / "OVMF.fd.part").exists()
    assert sorted(p.name for p in local.iterdir()) == ([] if ovmf == "fail" else ["OVMF.fd"])


@pytest.mark.parametrize("action", ["verify", "bat", "env"])
def test_ciao_scripts_need_a_setup(action: str, tmp_path: Path) -> None:
    text = render(f"cluster/ciao/{action}.sh.j2")
    if action != "env":
        assert text.index("require_ciao $ciao_tools") < text.index('[ -f "$ciao_env_file" ]')
    assert 'ciao_env_file="$ciao_local/demo.sh"' in text
    assert 'ciao_local="$ciao_home/local"' in text and "ciao_home=/home/dev" in text


def test_ciao_names_and_addresses() -> None:
    """The names and steps of ciao 194264a's testutil/singlevm (see test_ciao_pinned.py)."""
    setup = render("cluster/ciao/setup.sh.j2")
    for needle in (
        "ciao_gopath=/home/dev/go",
        'PATH="$ciao_gobin:$PATH"',
        'https_key="$ciao_local/https_key.pem"',
        'https_cert="$ciao_local/https_cert.pem"',
        '-subj "/C=US/ST=CA/L=Santa Clara/O=ciao/CN=$ciao_host"',
        "ssh-keygen -q -f \"$ciao_ssh_key\" -t rsa -N ''",
        "docker run --name ceph-demo -d --net=host -v /etc/ceph:/etc/ceph",
        "ceph auth get-or-create client.ciao -o /etc/ceph/ceph.client.ciao.keyring",
        "as_user ciao-deploy setup",
        "--local-launcher",
        '--server-ip="$gateway"',
        "--cnci=tiny",
        "as_user ciao-deploy auth create testuser",
        'chmod a+r "$ciao_conf"',
        "as_user ciao-deploy create-bat-workloads",
        "export CIAO_CONTROLLER=$ciao_host",
        "export CIAO_CLIENT_CERT_FILE=$client_cert",
        "export CIAO_ADMIN_CLIENT_CERT_FILE=$admin_client_cert",
        "export CIAO_CA_CERT_FILE=$https_cert",
        "export CIAO_SSH_KEY=$ciao_ssh_key",
        "ciao_pki=/etc/pki/ciao",
        'record exec "$ciao_gobin/ciao-launcher" --alsologtostderr -v 3 --hard-reset',
        'record exec systemctl disable --now "$unit" "$unit-prepare"',
        "record docker ceph-demo",
    ):
        assert needle in setup, needle
    # Undone newest first: the services stop before the launcher resets, both before the
    # files ciao-deploy wrote go; the user goes last.
    assert (
        setup.index("record exec userdel ciao")
        < setup.index('claim_file "$ciao_conf"')
        < setup.index("--hard-reset")
        < setup.index("systemctl disable --now")
        < setup.index("as_user ciao-deploy setup")
    )
    # What setup downloads is fetched after the check-only exit, before the first change.
    assert (
        setup.index("CCLOUDVM_CLUSTER_CHECK_ONLY")
        < setup.index("cannot pull the container image")
        < setup.index("make_state_dir\n")
    )
    verify = render("cluster/ciao/verify.sh.j2")
    for needle in (
        "--instances=2",
        'check "launch 2 VMs"',
        'check "launch 2 containers"',
        'check "the VM answers SSH"',
        'check "container to container ping"',
        'check "SSH over the external IP"',
        'check "the CNCI reboots"',
        'check "a map failure is reported"',
        'check "an unmap failure is reported"',
        'check "no ciao networks or interfaces left"',
        "ext_subnet=203.0.113.0/24",
        "StrictHostKeyChecking=accept-new",
        "as_admin ciao delete events",
    ):
        assert needle in verify, needle
    assert "StrictHostKeyChecking=no" not in verify
    bat = render("cluster/ciao/bat.sh.j2")
    assert 'test-cases -v "./$package"' in bat
    assert "base_bat" in bat and "workload_bat" in bat
    assert "GO111MODULE=off" in bat
    cleanup = render("cluster/ciao/cleanup.sh.j2")
    assert cleanup.index("nothing to clean up") < cleanup.index("ciao delete instance --all")
    assert cleanup.index("ciao delete instance --all") < cleanup.index("undo_journal ||")


@pytest.mark.parametrize("ref", [str(WORKLOAD), "ciao"])
def test_workloads_render_their_cluster_through_workload_py(ref: str, tmp_path: Path) -> None:
    from ccloudvm.core.hostinfo import host_user
    from ccloudvm.guest.proxy import ProxySettings
    from ccloudvm.state.paths import StateDir
    from ccloudvm.workloads.definition import load_workload
    from ccloudvm.workloads.templating import TemplateContext

    ctx = TemplateContext(host=host_user(), instance_name="c1", proxies=ProxySettings())
    workload = load_workload(StateDir(tmp_path), ref, ctx)
    assert sorted(workload.cluster) == sorted(ACTIONS)
    ClusterNetwork.from_mapping(workload.cluster_network)
    if ref == str(WORKLOAD):
        assert workload.cluster["setup"] == render("cluster/test/setup.sh.j2")
    for action, text in workload.cluster.items():
        script = tmp_path / f"{action}.sh"
        script.write_text(text)
        result = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True)
        assert result.returncode == 0, (action, result.stdout)


AWKWARD = [
    "my dir",
    'quote\'s "double"',
    "new\nline",
    "tab\there",
    "glob*?[a]",
    "$(touch pwned)`x`",
    "back\\slash\\n",
    "50%41 percent",
    "dé jà",
    "-leading-dash",
]


def test_journal_words_round_trip_and_agree_with_python(tmp_path: Path) -> None:
    from ccloudvm.cluster.journal import Journal, format_line

    state = tmp_path / "state"
    state.mkdir()
    words = ["exec", "printf", *AWKWARD, ""]
    args = " ".join(shlex.quote(word) for word in words)
    result = _journal_script(
        tmp_path,
        f"""
record {args}
journal_line {args}
printf '%s\\n' "$journal_text" >{tmp_path}/line
journal_words "$journal_text"
printf '%s\\0' "${{journal_args[@]}}" >{tmp_path}/decoded
""",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "pwned").exists()
    line = (state / "journal").read_text()
    assert line == (tmp_path / "line").read_text() == format_line(*words) + "\n"
    assert line.count("\n") == 1 and "\t" not in line and "'" not in line
    assert (tmp_path / "decoded").read_text().split("\0")[:-1] == words
    assert Journal(state / "journal").entries() == [words]
    # The same change again is recognised, not recorded twice.
    again = _journal_script(tmp_path, f"record {args}\nrecorded {args}\n")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (state / "journal").read_text() == line


def test_cleanup_of_paths_with_spaces_removes_exactly_them(tmp_path: Path) -> None:
    """The audit's case: a state folder under "my dir" must not make cleanup remove "my"."""
    mine = tmp_path / "my"
    mine.mkdir()
    (mine / "keep").write_text("the user's\n")
    state = tmp_path / "my dir" / "c"
    made = [state / "run" / name for name in AWKWARD]
    env = {"CLUSTER_STATE_DIR": str(state)}
    body = 'make_state_dir\nensure_dir "$run_dir"\n' + "".join(
        f"ensure_dir {shlex.quote(str(path))}\n"
        f"ensure_file {shlex.quote(str(path / name))} 0600 <<<made\n"
        for path, name in zip(made, AWKWARD, strict=True)
    )
    result = _journal_script(tmp_path, body, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(
        (path / name).read_text() == "made\n" for path, name in zip(made, AWKWARD, strict=True)
    )
    undo = _journal_script(tmp_path, "undo_journal\n", env)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert not (tmp_path / "my dir").exists()
    assert (mine / "keep").read_text() == "the user's\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.sh", "my"]


def test_state_parents_go_only_if_empty_and_last(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "c"
    env = {"CLUSTER_STATE_DIR": str(state)}
    result = _journal_script(tmp_path, 'make_state_dir\nensure_dir "$run_dir"\n', env)
    assert result.returncode == 0, result.stdout + result.stderr
    from ccloudvm.cluster.journal import Journal

    entries = Journal(state / "journal").entries()
    assert entries[:3] == [
        ["statedir", str(tmp_path / "var")],
        ["statedir", str(tmp_path / "var" / "lib")],
        ["statedir", str(state)],
    ]
    (tmp_path / "var" / "other").write_text("someone else's\n")  # appeared since
    undo = _journal_script(tmp_path, "undo_journal\n", env)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert sorted(p.name for p in (tmp_path / "var").iterdir()) == ["other"]


def test_a_replaced_file_is_backed_up_and_restored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    existing = tmp_path / "etc dir" / "configuration.yaml"
    existing.parent.mkdir()
    existing.write_text("the user's own\n")
    existing.chmod(0o640)
    env = {"CLUSTER_STATE_DIR": str(state)}
    write = f'make_state_dir\nensure_dir "$run_dir"\nensure_file {shlex.quote(str(existing))} 0644 <<<ours\n'
    assert _journal_script(tmp_path, write, env).returncode == 0
    assert existing.read_text() == "ours\n"
    # Setup twice: the backup is the user's file still, not our own copy.
    assert _journal_script(tmp_path, write, env).returncode == 0
    from ccloudvm.cluster.journal import Journal

    kinds = [entry[0] for entry in Journal(state / "journal").entries()]
    assert kinds.count("backup") == 1 and "file" not in kinds
    undo = _journal_script(tmp_path, "undo_journal\n", env)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert existing.read_text() == "the user's own\n"
    assert existing.stat().st_mode & 0o777 == 0o640
    assert not state.exists()


def test_a_backup_the_shell_cannot_put_back_is_kept_copy_and_all(tmp_path: Path) -> None:
    """undo_journal stops an entry at its first failing command, as the host's undo does:
    the copy of the original stays unless it was put back."""
    from ccloudvm.cluster.journal import Journal

    state = tmp_path / "state"
    copy = tmp_path / "backup" / "c.yaml"
    copy.parent.mkdir()
    copy.write_text("theirs\n")
    gone = tmp_path / "gone" / "c.yaml"  # its folder went: cp cannot put the file back
    Journal(state / "journal").record("backup", str(gone), str(copy))
    undo = _journal_script(tmp_path, "undo_journal || echo FAILED\n")
    assert "could not undo: backup" in undo.stdout and "FAILED" in undo.stdout
    assert copy.read_text() == "theirs\n"
    assert Journal(state / "journal").entries() == [["backup", str(gone), str(copy)]]


def test_the_shell_undoes_a_journal_python_wrote(tmp_path: Path) -> None:
    from ccloudvm.cluster.journal import Journal

    state = tmp_path / "state"
    target = tmp_path / "a dir; rm -rf ~"
    target.mkdir()
    Journal(state / "journal").record("dir", str(target))
    undo = _journal_script(tmp_path, "undo_journal\n")
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert not target.exists() and tmp_path.exists()


def _fake_tools(tmp_path: Path, addresses: str) -> Path:
    """A PATH of stand-ins: `ip` lists `addresses`, `id` says root, dnsmasq/busybox exist."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ip").write_text(f"#!/bin/sh\ncat <<'EOF'\n{addresses}EOF\n")
    (bindir / "id").write_text("#!/bin/sh\necho 0\n")
    for tool in ("dnsmasq", "busybox"):
        (bindir / tool).write_text("#!/bin/sh\nexit 0\n")
    for stand_in in bindir.iterdir():
        stand_in.chmod(0o755)
    for tool in ("cat", "grep", "wc", "dirname", "mkdir", "chmod", "sync"):
        found = shutil.which(tool)
        assert found
        (bindir / tool).symlink_to(found)
    return bindir


def _run_setup(tmp_path: Path, bindir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "setup.sh"
    script.write_text(render("cluster/test/setup.sh.j2"))
    env = {
        "PATH": str(bindir),
        "CLUSTER_NAME": "unit",
        "CLUSTER_STATE_DIR": str(tmp_path / "state"),
        **extra,
    }
    return subprocess.run(["/bin/bash", str(script)], capture_output=True, text=True, env=env)


def test_setup_refuses_a_subnet_in_use_before_changing_anything(tmp_path: Path) -> None:
    addresses = (
        "1: lo    inet 127.0.0.1/8 scope host lo\n"
        "7: br-lab@if3    inet 198.51.100.200/25 scope global br-lab\n"
    )
    result = _run_setup(tmp_path, _fake_tools(tmp_path, addresses))
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR: ")]
    assert errors == [
        "ERROR: the cluster subnet 198.51.100.0/24 is already used on this machine "
        "(198.51.100.200/25 on br-lab); remove that address, or set another gateway/prefix "
        "in the workload's cluster network"
    ]
    assert not (tmp_path / "state").exists()


def test_setup_check_only_stops_before_any_change(tmp_path: Path) -> None:
    addresses = "2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n"
    bindir = _fake_tools(tmp_path, addresses)
    result = _run_setup(tmp_path, bindir, CCLOUDVM_CLUSTER_CHECK_ONLY="1")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1] == "DONE: cluster unit can be set up here"
    assert not (tmp_path / "state").exists()
    # The test cluster's own requirement is checked in that pass too.
    (bindir / "busybox").unlink()
    missing = _run_setup(tmp_path, bindir, CCLOUDVM_CLUSTER_CHECK_ONLY="1")
    assert "ERROR: busybox is not installed (apt-get install busybox-static)" in missing.stdout
    assert not (tmp_path / "state").exists()


def test_the_pause_hook_has_a_name_of_its_own() -> None:
    for name in ALL:
        text = render(name)
        assert "CLUSTER_PAUSE_AFTER_CHANGES" not in text.replace(
            "CCLOUDVM_TEST_PAUSE_AFTER_CHANGES", ""
        )


def test_ciao_setup_keeps_what_it_replaces() -> None:
    setup = render("cluster/ciao/setup.sh.j2")
    assert "install -m 0644 -t" not in setup  # copies nobody recorded
    assert 'ensure_file "$ciao_pki/https_cert.pem" 0644 <"$https_cert"' in setup
    assert 'ensure_file "$ovmf" 0644 <"$ciao_local/OVMF.fd"' in setup
    assert 'ensure_file "$ciao_env_file" 0644' in setup
    # Files ciao-deploy writes are claimed first: backed up when they exist.
    assert 'claim_file "$ciao_conf"' in setup
    assert 'claim_file "/usr/local/bin/$unit"' in setup
    assert 'claim_file "/etc/systemd/system/$unit.service"' in setup
