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

from ccloudvm.cluster import ACTIONS, ClusterNetwork

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
WORKLOAD = REPO / "tests" / "workloads" / "cluster-test.yaml"

CONTEXT = {
    "user": {"name": "dev", "uid": 1000, "gid": 1000, "home": "/home/dev"},
    "host": SimpleNamespace(gopath=Path("/home/dev/go")),
}


def environment() -> jinja2.Environment:
    """Jinja2 set up as ccloudvm.templating.make_environment does."""
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


def _journal_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run the shared functions for real, as this (unprivileged) user, on harmless entries."""
    common = environment().get_template("cluster/_common.sh.j2").render()
    script = tmp_path / "journal.sh"
    script.write_text("#!/bin/bash\nset -eu\n" + common + "\n" + body)
    env = {
        **os.environ,
        "CLUSTER_NAME": "unit",
        "CLUSTER_STATE_DIR": str(tmp_path / "state"),
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
    assert "nothing to clean up: cluster unit is not set up here" in result.stdout


def test_ciao_setup_checks_its_programs_before_changing_anything(tmp_path: Path) -> None:
    text = render("cluster/ciao/setup.sh.j2")
    first_check = text.index("require_ciao $ciao_tools")
    # Before it, only definitions: comments, assignments, functions (indented bodies).
    harmless = re.compile(r"(#|$|\s|[a-z_]+=|[A-Z]+=|[a-z_]+\(\) \{|\}|\{|: |set -eu)")
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
        "ERROR: ciao cannot run here, missing: ciao-cert ciao-scheduler ciao-controller "
        "ciao-launcher ciao docker"
    )
    assert not state.exists()


@pytest.mark.parametrize("action", ["verify", "bat", "env"])
def test_ciao_scripts_need_a_setup(action: str, tmp_path: Path) -> None:
    text = render(f"cluster/ciao/{action}.sh.j2")
    if action != "env":
        assert text.index("require_ciao $ciao_tools") < text.index('[ -f "$ciao_env_file" ]')
    assert 'ciao_env_file="$ciao_local/demo.sh"' in text
    assert 'ciao_local="$ciao_home/local"' in text and "ciao_home=/home/dev" in text


def test_ciao_names_and_addresses() -> None:
    setup = render("cluster/ciao/setup.sh.j2")
    for needle in (
        "ciao_gopath=/home/dev/go",
        'PATH="$ciao_gopath/bin:$PATH"',
        '-host="$ciao_host" -ip="$gateway"',
        "-role scheduler",
        "agent,netagent",
        "--single",
        "--network=dual",
        "--hard-reset",
        "compute_net: [$subnet]",
        "export CIAO_CONTROLLER=$ciao_host",
        "export CIAO_USERNAME=$ciao_username",
        "export CIAO_PASSWORD=$ciao_password",
        "export CIAO_CA_CERT_FILE=$ciao_ca_cert",
        "export CIAO_SSH_KEY=$ciao_ssh_key",
        "ciao_pki=/etc/pki/ciao",
        'record pidfile "$name" "$pidfile"',
    ):
        assert needle in setup, needle
    verify = render("cluster/ciao/verify.sh.j2")
    for needle in (
        "--instances 2",
        'check "launch 2 VMs"',
        'check "launch 2 containers"',
        'check "the VMs answer SSH"',
        'check "container to container ping"',
        'check "delete all instances, none left"',
        "StrictHostKeyChecking=accept-new",
    ):
        assert needle in verify, needle
    assert "StrictHostKeyChecking=no" not in verify
    bat = render("cluster/ciao/bat.sh.j2")
    assert 'test-cases -v "./$package"' in bat
    assert "base_bat" in bat and "workload_bat" in bat
    cleanup = render("cluster/ciao/cleanup.sh.j2")
    assert cleanup.index("nothing to clean up") < cleanup.index("ciao delete instance --all")
    assert cleanup.index("ciao delete instance --all") < cleanup.index("undo_journal ||")


@pytest.mark.parametrize("ref", [str(WORKLOAD), "ciao"])
def test_workloads_render_their_cluster_through_workload_py(ref: str, tmp_path: Path) -> None:
    from ccloudvm.hostinfo import host_user
    from ccloudvm.paths import StateDir
    from ccloudvm.proxy import ProxySettings
    from ccloudvm.templating import TemplateContext
    from ccloudvm.workload import load_workload

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
