"""`ccloudvm setup` on a host whose programs are stand-ins in a folder on PATH.

The stand-in apt-get records how it was called and "installs" by creating the missing
programs, so setup is checked end to end without touching the real host.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ccloudvm.app import hostsetup
from ccloudvm.core import proc
from ccloudvm.core.errors import CcloudvmError
from ccloudvm.images import build as imagebuild
from ccloudvm.state.paths import StateDir

APT_GET = """#!/bin/sh
echo "$DEBIAN_FRONTEND: $*" >> {log}
if [ "$1" = install ]; then
    for program in {programs}; do
        printf '#!/bin/sh\\n' > {bin}/$program
        /bin/chmod +x {bin}/$program
    done
fi
"""
SUDO = """#!/bin/sh
[ "$1" = -n ] && shift
exec "$@"
"""


def _program(folder: Path, name: str, text: str = "#!/bin/sh\n") -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only the stand-ins; acceleration fixed, so the report is this test's."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.setattr(proc, "SBIN_DIRS", ())  # this host's real /usr/sbin stays out
    monkeypatch.setenv("CCLOUDVM_ACCEL", "tcg")
    return folder


def test_check_reports_what_is_missing_and_installs_nothing(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("qemu-system-x86_64", "qemu-img", "ssh"):
        _program(host, name)
    _program(host, "apt-get", "#!/bin/sh\nexit 99\n")  # must not be called
    report = hostsetup.setup(StateDir(tmp_path / "home"), install=False)
    assert report["missing"] == [
        "mmdebstrap", "mkfs.ext4", "unshare", "newuidmap", "newgidmap", "ip", "dnsmasq",
    ]  # fmt: skip
    assert report["accel"] == "tcg" and report["nested"] is False
    err = capsys.readouterr().err
    assert "qemu-img             ok       makes instance disks" in err
    assert "mmdebstrap           missing  builds Debian images locally" in err
    assert "acceleration: TCG (software emulation chosen by the user)" in err
    assert (tmp_path / "home/instances").is_dir()


def test_install_asks_apt_get_for_the_packages_of_missing_programs(
    host: Path, tmp_path: Path
) -> None:
    log = tmp_path / "apt-get.log"
    programs = " ".join(hostsetup.NEEDED)
    _program(host, "apt-get", APT_GET.format(log=log, programs=programs, bin=host))
    _program(host, "sudo", SUDO)  # used only when the tests do not run as root
    _program(host, "qemu-img")
    report = hostsetup.setup(StateDir(tmp_path / "home"), install=True)
    assert report["missing"] == []
    assert log.read_text().splitlines() == [
        "noninteractive: update -q",
        "noninteractive: install -y -q dnsmasq-base e2fsprogs iproute2 mmdebstrap"
        " openssh-client qemu-system-x86 uidmap util-linux",
    ]


def test_without_apt_get_it_says_what_to_install(host: Path, tmp_path: Path) -> None:
    _program(host, "qemu-img")
    with pytest.raises(CcloudvmError, match="missing: qemu-system-x86_64, ssh") as info:
        hostsetup.setup(StateDir(tmp_path / "home"), install=True)
    assert info.value.hint == "install them with your distribution's package manager"


def test_programs_in_sbin_folders_count_when_path_lacks_them(
    host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An ordinary user's PATH often has no /usr/sbin, where mkfs.ext4 and dnsmasq live.
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    for name in ("mkfs.ext4", "dnsmasq", "ip"):
        _program(sbin, name)
    monkeypatch.setattr(proc, "SBIN_DIRS", (str(sbin),))
    assert hostsetup.missing_programs() == [
        "qemu-system-x86_64",
        "qemu-img",
        "ssh",
        "mmdebstrap",
        "unshare",
        "newuidmap",
        "newgidmap",
    ]
    assert proc.require_tool("mkfs.ext4") == str(sbin / "mkfs.ext4")


def _subids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(imagebuild, "SUBUID_FILE", tmp_path / "subuid")
    monkeypatch.setattr(imagebuild, "SUBGID_FILE", tmp_path / "subgid")


def test_a_user_without_subordinate_ids_is_told_how_to_add_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 54321)
    monkeypatch.setattr(os, "getuid", lambda: 54321)
    monkeypatch.setattr(imagebuild, "userns_problem", lambda: None)
    _subids(tmp_path, monkeypatch, "alice:100000:65536\n")
    problem = hostsetup.subid_report()
    assert problem is not None and "no range of 65536 subordinate uids" in problem
    err = capsys.readouterr().err
    assert "images cannot be built without root" in err
    assert "sudo usermod --add-subuids 165536-231071 --add-subgids 165536-231071 54321" in err
    _subids(tmp_path, monkeypatch, "alice:100000:65536\n54321:165536:65536\n")
    assert hostsetup.subid_report() is None
    assert "subordinate ids for building images without root" in capsys.readouterr().err


def test_root_needs_no_subordinate_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    _subids(tmp_path, monkeypatch, "")
    assert hostsetup.subid_report() is None
    assert "not needed: root builds images directly" in capsys.readouterr().err


def test_a_host_that_forbids_user_namespaces_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 54321)
    monkeypatch.setattr(os, "getuid", lambda: 54321)
    _subids(tmp_path, monkeypatch, "54321:100000:65536\n")
    monkeypatch.setattr(hostsetup, "find_program", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(imagebuild, "userns_problem", lambda: "this host lets no user namespace")
    assert hostsetup.subid_report() == "this host lets no user namespace"
    assert "apparmor_restrict_unprivileged_userns=0" in capsys.readouterr().err
