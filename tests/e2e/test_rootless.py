"""An ordinary user, as on a workstation, walks the README path without root: builds the
debian-12 image (mmdebstrap in a user namespace), creates a VM from it, deletes both.
Nothing in the user's state directory is ever owned by another uid, and `image rm` is
all or nothing.

The user is made for the test with `useradd -m` (which gives it a subordinate id range)
and removed with `userdel -r` afterwards. Its PATH has no sbin folders. It runs the
ccloudvm of this work tree with an interpreter it may execute (the venv's may live in
root's home). Its image is built in its own home, not in the shared e2e image cache.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import ccloudvm

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="making a user for the test needs root"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="no useradd"),
]

REPO = Path(ccloudvm.__file__).resolve().parent.parent
GUEST = ("/usr/bin/sudo", "/etc/shadow", "/")  # owners inside the built image


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    python: str

    @property
    def state(self) -> Path:
        return self.home / ".ccloudvm"

    def ccloudvm(self, *args: str, check: bool = True, timeout: float = 1800) -> Result:
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",  # as on a workstation: no sbin
            "CCLOUDVM_HOME": str(self.state),
            "PYTHONPATH": os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]]),
            "LANG": "C.UTF-8",
        }
        started = time.monotonic()
        done = subprocess.run(  # noqa: S603 - test harness, fixed argv
            ["runuser", "-u", self.name, "--", "env", "-i"]
            + [f"{k}={v}" for k, v in env.items()]
            + [self.python, "-m", "ccloudvm", *args],
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        if check and done.returncode != 0:
            raise AssertionError(
                f"ccloudvm {' '.join(args)} as {self.name} exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return result

    def processes(self) -> list[int]:
        listed = subprocess.run(
            ["ps", "-u", str(self.uid), "-o", "pid="], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in listed.stdout.split()]


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float


def _python_for(user: str) -> str | None:
    """An interpreter of this Python version that `user` may run."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}"):
        ok = subprocess.run(
            ["runuser", "-u", user, "--", candidate, "-c", "import sys; print(sys.version)"],
            capture_output=True,
            text=True,
            check=False,
        )
        if ok.returncode == 0 and ok.stdout.startswith(version + "."):
            return candidate
    return None


@pytest.fixture
def ordinary_user() -> Iterator[User]:
    name = "ccvm-" + secrets.token_hex(3)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
    user = None
    try:
        entry = pwd.getpwnam(name)
        python = _python_for(name)
        if python is None:
            pytest.skip(f"no Python {sys.version_info[:2]} that {name} may run")
        user = User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), python)
        if name not in Path("/etc/subuid").read_text():  # older useradd: add a range
            span = "300000-365535"
            subprocess.run(
                ["usermod", "--add-subuids", span, "--add-subgids", span, name], check=True
            )
        yield user
    finally:
        if user is not None:
            for pid in user.processes():  # only ever this test's: the user is its own
                subprocess.run(["kill", "-9", str(pid)], check=False)
            deadline = time.monotonic() + 10
            while user.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


def _foreign(state: Path, uid: int, gid: int) -> list[str]:
    """Everything under `state` not owned by the user and its group."""
    found = []
    for folder, dirs, files in os.walk(state):
        for entry in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            st = os.lstat(entry)
            if (st.st_uid, st.st_gid) != (uid, gid):
                found.append(f"{entry} ({st.st_uid}:{st.st_gid})")
    return sorted(set(found))


def test_an_ordinary_user_builds_uses_and_removes_an_image(ordinary_user: User) -> None:
    user = ordinary_user
    checked = user.ccloudvm("setup", "--check")
    assert "subordinate ids for building images without root" in checked.err, checked.err
    for program in ("mmdebstrap", "mkfs.ext4", "unshare", "newuidmap", "newgidmap"):
        assert f"{program:20} ok" in checked.err, checked.err
    built = user.ccloudvm("image", "build", "debian-12")
    print(f"rootless image build as {user.name}: {built.seconds:.1f} s\n{built.err}")
    assert "in a user namespace (no root)" in built.err
    assert "warm-boot snapshot of debian-12 made" in built.err, "build makes the default's"
    assert _foreign(user.state, user.uid, user.gid) == []
    listed = {i["name"]: i for i in json.loads(user.ccloudvm("images", "--json").out)}
    assert "debian-12" in listed
    images = list((user.state / "cache/images").glob("debian-12-*"))
    assert len(images) == 1
    image = images[0]

    # A VM from it, as the user (TCG here: /dev/kvm is root's, or hangs).
    created = user.ccloudvm("create", "debian", "--name", "mine", timeout=900)
    print(f"create as {user.name}: {created.seconds:.1f} s")
    # The first create after a build, with no size flags, starts from the build's snapshot.
    assert "booting cold" not in created.err, created.err
    assert json.loads(user.ccloudvm("status", "mine", "--json").out)["boot"] == "warm"
    assert user.ccloudvm("run", "mine", "--", "hostname").out.strip() == "mine"
    # The file system has the tree's true owners (setuid sudo works, shadow's group is kept).
    owners = user.ccloudvm("run", "mine", "--", "sudo", "-n", "stat", "-c", "%U:%G %a", *GUEST)
    assert owners.out.split("\n")[:3] == ["root:root 4755", "root:shadow 640", "root:root 755"]
    user.ccloudvm("delete", "mine", timeout=300)
    assert _foreign(user.state, user.uid, user.gid) == []

    # As after an earlier `sudo ccloudvm image build`: a folder the user may not empty.
    # The removal says so and removes nothing, not even the snapshots.
    warm = user.state / "cache/warm" / image.name
    had_snapshots = warm.exists()
    os.chown(image, 0, 0)
    try:
        refused = user.ccloudvm("image", "rm", "debian-12", check=False)
    finally:
        os.chown(image, user.uid, user.gid)
    assert refused.code != 0 and "nothing was removed" in refused.err, refused.err
    assert (image / "vmlinuz").exists() and warm.exists() == had_snapshots

    user.ccloudvm("image", "rm", "debian-12")
    assert not image.exists() and not warm.exists()
    assert list((user.state / "cache/images").iterdir()) == []
    assert list((user.state / "cache/tmp").glob("image-*")) == []
    assert _foreign(user.state, user.uid, user.gid) == []
    deadline = time.monotonic() + 30
    while user.processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert user.processes() == [], "the user's VM and helpers must all have ended"
