"""The libvirt driver on a real VM, through a libvirt daemon the test starts and removes.

The daemon (the `libvirt_uri` fixture, tests/e2e/libvirt_daemon.py) is libvirtd run as
root in the foreground, in a mount namespace of its own where /run, /var/lib, /var/cache,
/var/log and /etc/libvirt are empty tmpfs: everything it writes (domain definitions, logs,
pid files) vanishes with it, and only its socket, in the test's folder, is seen from
outside (qemu:///system?socket=...). The QEMU driver of a root libvirtd needs its
configured user to exist (Debian's libvirt-daemon-system makes libvirt-qemu; we do not
install that package): made for the test if missing, and removed.

One boot covers create -> run -> 9p mount -> copy -> stop -> start (data kept) ->
delete; the bad inputs (a URI that does not answer, a foreign domain of the same name)
fail before anything boots. The host's network is unchanged: no virbr0, no firewall rule.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI, qemu_pids
from tests.e2e.libvirt_daemon import virsh

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("libvirtd") is None or shutil.which("virsh") is None,
        reason="libvirt is not installed (make libvirt)",
    ),
]

NAME = "e2e-virt"


def _host_network() -> dict[str, set[str]]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    nft = ""
    if shutil.which("nft"):
        nft = subprocess.run(
            ["nft", "list", "ruleset"], capture_output=True, text=True, check=False
        ).stdout
    iptables = ""
    if shutil.which("iptables-save"):
        iptables = subprocess.run(
            ["iptables-save"], capture_output=True, text=True, check=False
        ).stdout
    # Only what libvirt would add: other tests on a shared host may change the rest meanwhile.
    return {
        "links": {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()},
        "libvirt rules": {
            line.strip()
            for line in (nft + iptables).splitlines()
            if "libvirt" in line.lower() or "virbr" in line
        },
    }


def _qemu_running_for(instance_dir: Path) -> bool:
    return bool(qemu_pids(instance_dir))


def test_libvirt_driver_lifecycle(cli: CLI, libvirt_uri: str, tmp_path: Path) -> None:
    uri = libvirt_uri
    network_before = _host_network()
    common = ["--driver", "libvirt", "--mem", "1024", "--cpus", "2", "--disk", "8"]

    # Bad input, one line each, before anything is made: a URI that does not answer ...
    nowhere = f"qemu:///system?socket={tmp_path / 'no-such-socket'}"
    gone = cli("create", "debian", "--name", NAME, *common, "--connect", nowhere, check=False)
    assert gone.code == 1 and "does not answer" in gone.err and "Traceback" not in gone.err
    assert len(gone.err.strip().splitlines()) == 1, gone.err
    # ... and a domain of the same name that ccloudvm did not make: refused, never touched.
    foreign = tmp_path / "foreign.xml"
    foreign.write_text(
        "<domain type='qemu'><name>not-ours</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"
    )
    virsh(uri, "define", str(foreign))
    foreign_xml = virsh(uri, "dumpxml", "not-ours")
    clash = cli("create", "debian", "--name", "not-ours", *common, "--connect", uri, check=False)
    assert clash.code == 2 and "ccloudvm did not make" in clash.err, clash.err
    assert "Traceback" not in clash.err and len(clash.err.strip().splitlines()) == 1
    assert virsh(uri, "dumpxml", "not-ours") == foreign_xml
    assert not (cli.home / "instances" / "not-ours").exists()

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host.txt").write_text("hello from the host\n")
    cli("create", "debian", "--name", NAME, *common, "--connect", uri,
        "--mount", f"{shared}:/mnt/shared")  # fmt: skip
    instance_dir = cli.home / "instances" / NAME
    status = json.loads(cli("status", NAME, "--json").out)
    assert status["state"] == "running" and status["driver"] == f"libvirt {uri}"
    assert status["ssh"].split("@")[1].startswith("127.77."), "SSH on the instance's address"
    assert virsh(uri, "domstate", NAME).strip() == "running"
    assert "libvirt (local)" in cli("instances", env={"COLUMNS": "200"}).out
    saved = json.loads((instance_dir / "state.json").read_text())
    assert (saved["driver"], saved["connect"]) == ("libvirt", uri)

    assert cli("run", NAME, "--", "hostname").out.strip() == NAME
    assert cli("run", NAME, "--", "sh", "-c", "exit 7", check=False).code == 7
    assert "hello from the host" in cli("run", NAME, "--", "cat", "/mnt/shared/from-host.txt").out
    local = tmp_path / "up.txt"
    local.write_text("uploaded\n")
    cli("copy", NAME, str(local), ":/var/tmp/")
    back = tmp_path / "back"
    back.mkdir()
    cli("copy", NAME, ":/var/tmp/up.txt", str(back))
    assert (back / "up.txt").read_text() == "uploaded\n"

    cli("stop", NAME)
    assert json.loads(cli("status", NAME, "--json").out)["state"] == "stopped"
    assert virsh(uri, "domstate", NAME).strip() == "shut off"
    assert not _qemu_running_for(instance_dir)
    cli("start", NAME)
    assert cli("run", NAME, "--", "cat", "/var/tmp/up.txt").out == "uploaded\n"  # disk kept

    cli("delete", NAME)
    assert not instance_dir.exists()
    assert NAME not in virsh(uri, "list", "--all", "--name").split()
    assert "not-ours" in virsh(uri, "list", "--all", "--name").split()  # still not touched
    assert not _qemu_running_for(instance_dir)

    network_after = _host_network()
    new_links = network_after["links"] - network_before["links"]
    assert not {link for link in new_links if link.startswith(("virbr", "vnet", "tap"))}, new_links
    assert network_after["libvirt rules"] == network_before["libvirt rules"]
