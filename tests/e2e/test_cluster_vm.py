"""The test cluster inside a real VM made by ccloudvm: the same scripts as on bare metal.

One boot: create from tests/workloads/cluster-test.yaml (its provision step installs
dnsmasq, busybox, iptables and nftables with apt, straight from Debian's archive through
QEMU's NAT), then `cluster setup -> setup again -> verify -> env -> cleanup`, with the
guest's links, routes, rules, firewall (iptables-save and nft), ip_forward, namespaces
and /var/lib/ccloudvm compared: a second setup changes none of it, cleanup restores all
of it. Bad input: cluster commands on an instance whose workload has no cluster section
exit 2 with one line.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI

pytestmark = pytest.mark.e2e

NAME = "e2e-clu"
CLUSTER_TEST = Path(__file__).resolve().parents[1] / "workloads" / "cluster-test.yaml"


def _guest(cli: CLI, script: str) -> str:
    return cli("run", NAME, "--", "sudo", "sh", "-c", script).out


# Everything of the guest the cluster may touch, one section each. Packet counters, route
# expiry times and IPv6's "tentative" (duplicate address detection still running on a
# new link's address) move on their own: left out.
SNAPSHOT = r"""
echo '## links'; ip -o link | awk -F': ' '{print $2}' | sort
echo '## addresses'; ip -o addr | sed 's/ valid_lft.*//; s/ tentative//'
echo '## routes'; ip route
echo '## routes6'; ip -6 route | sed 's/ expires [0-9]*sec//'
echo '## rules'; ip rule; ip -6 rule
echo '## iptables'; iptables-save 2>/dev/null | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]//'
echo '## nft'; nft list ruleset 2>/dev/null | sed 's/ counter packets [0-9]* bytes [0-9]*//'
echo '## ip_forward'; cat /proc/sys/net/ipv4/ip_forward
echo '## netns'; ip netns list
echo '## state'; ls -a /var/lib/ccloudvm 2>&1
echo '## processes'; ps -eo comm | grep -xE 'dnsmasq|busybox|udhcpc' | sort || true
"""


def _snapshot(cli: CLI) -> dict[str, str]:
    sections: dict[str, str] = {}
    for block in _guest(cli, SNAPSHOT).split("## ")[1:]:
        title, _, body = block.partition("\n")
        sections[title] = body
    return sections


def test_cluster_in_a_vm(cli: CLI, tmp_path: Path) -> None:
    # The instance's workload: the test cluster itself, through a file of the test's own,
    # so that the end of the test can take the cluster section away again.
    workload = tmp_path / "cluster-vm.yaml"
    workload.write_text(f"inherits: {CLUSTER_TEST}\n")

    start = time.monotonic()
    created = cli("create", str(workload), "--name", NAME, "--mem", "1024")
    print(f"\ncreate took {time.monotonic() - start:.1f} s\n{created.err}")
    assert re.search(r"^cluster test tools \.\.\. OK", created.err, re.M), created.err
    before = _snapshot(cli)
    assert before["netns"] == "", before

    timings: dict[str, float] = {}

    def timed(action: str, *args: str) -> str:
        begin = time.monotonic()
        result = cli("cluster", action, NAME, *args)
        timings[action] = time.monotonic() - begin
        return result.out + result.err

    setup = timed("setup")
    assert "FAIL" not in setup, setup
    assert re.search(rf"^test cluster {NAME} is up: tenants {NAME}-t1 {NAME}-t2", setup, re.M)
    assert setup.rstrip().splitlines()[-1].startswith(f"test cluster {NAME} is up"), setup
    # setup twice changes nothing and still succeeds
    up = _snapshot(cli)
    assert up["ip_forward"].strip() == "1"
    assert "MASQUERADE" in up["iptables"] and "198.51.100.0/24" in up["iptables"]
    setup_again = cli("cluster", "setup", NAME)
    assert "FAIL" not in setup_again.err
    assert _snapshot(cli) == up
    verified = timed("verify")
    assert re.search(r"^9 passed, 0 failed$", verified, re.M), verified
    env = cli("cluster", "env", NAME).out
    assert f"export CLUSTER_NAME='{NAME}'" in env
    assert "export CLUSTER_GATEWAY='198.51.100.1'" in env
    assert re.search(r"CLUSTER_SERVICE_URL='http://198\.51\.100\.\d+:8080/'", env), env

    # In the guest while it runs: the network and the tenants as documented.
    links = _guest(cli, "ip -o link")
    assert "ciao_br" in links and "ciaovlan@ciao_br" in links
    assert "inet 198.51.100.1/24" in _guest(cli, "ip -o -4 addr show dev ciaovlan")
    assert set(_guest(cli, "ip netns list | cut -d' ' -f1").split()) >= {f"{NAME}-t1", f"{NAME}-t2"}
    assert "dnsmasq" in _guest(cli, "ps -eo comm")

    cleaned = timed("cleanup")
    assert "FAIL" not in cleaned, cleaned
    assert cleaned.rstrip().splitlines()[-1].startswith(f"cluster {NAME} is cleaned up"), cleaned
    cycle = timings["setup"] + timings["verify"] + timings["cleanup"]
    print(
        "cluster in the VM (ccloudvm commands, SSH included): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + f"; setup -> verify -> cleanup {cycle:.1f} s"
    )

    # After cleanup: the guest is as it was: links, routes, firewall (no empty filter or
    # nat table left behind), forwarding, namespaces, /var/lib/ccloudvm, processes.
    after = _snapshot(cli)
    assert "ciao_br" not in after["links"] and "ciaovlan" not in after["links"], after
    for key, value in before.items():
        assert after[key] == value, (key, value, after[key])
    # ... and cleanup with nothing set up succeeds, and says so
    nothing = cli("cluster", "cleanup", NAME)
    assert nothing.code == 0
    assert nothing.err.strip().splitlines()[-1] == (
        f"nothing to clean up: cluster {NAME} is not set up here"
    ), nothing.err
    # verify without a cluster fails, and says why
    not_up = cli("cluster", "verify", NAME, check=False)
    assert not_up.code == 1 and "not set up" in not_up.err, not_up

    # Bad input: the instance's workload has no cluster section (any more).
    workload.write_text("inherits: debian\n")
    for action in ("setup", "verify", "env"):
        bad = cli("cluster", action, NAME, check=False)
        assert bad.code == 2, bad
        assert "has no cluster section" in bad.err and "Traceback" not in bad.err
        assert len([line for line in bad.err.splitlines() if line.strip()]) <= 2, bad.err

    cli("delete", NAME)
    assert cli.instances() == []


def test_cluster_commands_need_a_cluster_workload(cli: CLI) -> None:
    """Bare metal too: a workload without a cluster is refused before anything happens."""
    bad = cli("baremetal", "setup", "debian", check=False)
    assert bad.code == 2, bad
    assert "has no cluster section" in bad.err and "Traceback" not in bad.err
    missing = cli("cluster", "setup", "no-such-instance", check=False)
    assert missing.code != 0 and "Traceback" not in missing.err, missing
