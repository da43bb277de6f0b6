"""The libvirt driver on a real VM, through a libvirt daemon the test starts and removes.

The daemon is libvirtd run as root in the foreground, in a mount namespace of its own
where /run, /var/lib, /var/cache, /var/log and /etc/libvirt are empty tmpfs: everything it
writes (domain definitions, logs, pid files) vanishes with it, and only its socket, in the
test's folder, is seen from outside (qemu:///system?socket=...). The QEMU driver of a
root libvirtd needs its configured user to exist (Debian's libvirt-daemon-system makes
libvirt-qemu; we do not install that package): made for the test if missing, and removed.

One boot covers create -> run -> 9p mount -> copy -> stop -> start (data kept) ->
delete; the bad inputs (a URI that does not answer, a foreign domain of the same name)
fail before anything boots. The host's network is unchanged: no virbr0, no firewall rule.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI, qemu_pids

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("libvirtd") is None or shutil.which("virsh") is None,
        reason="libvirt is not installed (make libvirt)",
    ),
]

NAME = "e2e-virt"
QEMU_USER = "libvirt-qemu"  # Debian's compiled-in default for the QEMU driver

DAEMON_SCRIPT = """set -eu
for d in /run /var/lib /var/cache /var/log /etc/libvirt; do
    mount -t tmpfs -o mode=0755 ccloudvm-e2e "$d"
done
cp "$1/qemu.conf" /etc/libvirt/qemu.conf
exec libvirtd --config "$1/libvirtd.conf"
"""

QEMU_CONF = """user = "root"
group = "root"
swtpm_user = "root"
swtpm_group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
stdio_handler = "file"
"""


def _virsh(uri: str, *args: str, check: bool = True) -> str:
    result = subprocess.run(  # noqa: S603 - test harness, fixed argv
        ["virsh", "-q", "-c", uri, *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: {result.stderr}")
    return result.stdout


def _user_exists(name: str) -> bool:
    return (
        subprocess.run(["getent", "passwd", name], capture_output=True, check=False).returncode == 0
    )


@pytest.fixture
def libvirt_uri(tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed (make libvirt)")
    root = tmp_path / "libvirt"
    (root / "sock").mkdir(parents=True)
    (root / "libvirtd.conf").write_text(
        f'unix_sock_dir = "{root / "sock"}"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        f'log_outputs = "3:file:{root / "libvirtd.log"}"\n'
    )
    (root / "qemu.conf").write_text(QEMU_CONF)
    (root / "start.sh").write_text(DAEMON_SCRIPT)
    made_user = not _user_exists(QEMU_USER)
    if made_user:
        subprocess.run(  # noqa: S603 - fixed argv
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", QEMU_USER],
            check=True,
        )  # fmt: skip
    uri = f"qemu:///system?socket={root / 'sock' / 'libvirt-sock'}"
    with (root / "daemon.out").open("w") as out:
        daemon = subprocess.Popen(  # noqa: S603 - fixed argv
            ["unshare", "--mount", "--propagation", "private", "sh", str(root / "start.sh"), str(root)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(
            ["virsh", "-c", uri, "version"], capture_output=True, check=False
        ).returncode:  # noqa: S603
            assert daemon.poll() is None, (root / "daemon.out").read_text()
            assert time.monotonic() < deadline, "libvirtd did not answer within 30 s"
            time.sleep(0.3)
        yield uri
    finally:
        # Nothing of the daemon outlives the test: its domains, itself, the user made for it.
        if daemon.poll() is None:
            for name in _virsh(uri, "list", "--all", "--name", check=False).split():
                _virsh(uri, "destroy", name, check=False)
                _virsh(uri, "undefine", name, check=False)
            daemon.terminate()
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(10)
        if made_user:
            subprocess.run(["userdel", QEMU_USER], check=False)  # noqa: S603 - fixed argv


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
    _virsh(uri, "define", str(foreign))
    foreign_xml = _virsh(uri, "dumpxml", "not-ours")
    clash = cli("create", "debian", "--name", "not-ours", *common, "--connect", uri, check=False)
    assert clash.code == 2 and "ccloudvm did not make" in clash.err, clash.err
    assert "Traceback" not in clash.err and len(clash.err.strip().splitlines()) == 1
    assert _virsh(uri, "dumpxml", "not-ours") == foreign_xml
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
    assert _virsh(uri, "domstate", NAME).strip() == "running"
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
    assert _virsh(uri, "domstate", NAME).strip() == "shut off"
    assert not _qemu_running_for(instance_dir)
    cli("start", NAME)
    assert cli("run", NAME, "--", "cat", "/var/tmp/up.txt").out == "uploaded\n"  # disk kept

    cli("delete", NAME)
    assert not instance_dir.exists()
    assert NAME not in _virsh(uri, "list", "--all", "--name").split()
    assert "not-ours" in _virsh(uri, "list", "--all", "--name").split()  # still not touched
    assert not _qemu_running_for(instance_dir)

    network_after = _host_network()
    new_links = network_after["links"] - network_before["links"]
    assert not {link for link in new_links if link.startswith(("virbr", "vnet", "tap"))}, new_links
    assert network_after["libvirt rules"] == network_before["libvirt rules"]
