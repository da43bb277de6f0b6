"""End-to-end fixtures: one real Debian image, built once and cached between runs, served
to ccloudvm's download code from a real HTTP server on 127.0.0.1.

The image is built with the bundled recipe (images/debian-12.yaml) into a cache outside the
work tree (CCLOUDVM_TEST_IMAGE_CACHE, default /var/tmp/ccloudvm-test-cache), keyed by the
recipe, so a second run reuses it. Every e2e test's own ccloudvm state lives in a fresh
directory whose images/debian-12.yaml points at the local server, so `create debian`
exercises the real download path: SHA256SUMS, sha256 check, and resume.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ccloudvm.images import catalog as images
from ccloudvm.state.paths import StateDir, resource_dir
from tests.e2e import libvirt_daemon
from tests.e2e.libvirt_daemon import RemoteLibvirt
from tests.support.httpserver import FileServer, serve_directory

IMAGE = "debian-12"


@dataclass
class ServedImage:
    base_url: str
    server: FileServer
    cmdline: str | None


@pytest.fixture(scope="session")
def built_image() -> images.BaseImage:
    cache = Path(os.environ.get("CCLOUDVM_TEST_IMAGE_CACHE", "/var/tmp/ccloudvm-test-cache"))
    return images.ensure_image(StateDir(cache), IMAGE)


@pytest.fixture(scope="session")
def served_image(
    built_image: images.BaseImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedImage]:
    export = tmp_path_factory.mktemp("served-image")
    images.export_image(built_image, export)
    with serve_directory(export) as (base_url, server):
        yield ServedImage(base_url, server, built_image.cmdline)


def write_image_definition(home: Path, served: ServedImage) -> None:
    """Point the `debian-12` image of the state at `home` to the local HTTP server."""
    bundled = yaml.safe_load((resource_dir("images") / f"{IMAGE}.yaml").read_text())
    definition = {
        "description": "Debian 12, served by the test's HTTP server on 127.0.0.1",
        "source": {
            "disk": f"{served.base_url}/disk.qcow2",
            "kernel": f"{served.base_url}/vmlinuz",
            "initrd": f"{served.base_url}/initrd.img",
            "sha256sums": f"{served.base_url}/SHA256SUMS",
        },
        "boot": bundled["boot"],
    }
    (home / "images").mkdir(parents=True, exist_ok=True)
    (home / "images" / f"{IMAGE}.yaml").write_text(yaml.safe_dump(definition))


@dataclass
class Result:
    code: int
    out: str
    err: str


class CLI:
    """Runs the real `ccloudvm` command with its own state directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        # Background snapshot jobs only where a test asks for them (env=...): elsewhere
        # they would compete for the CPUs with the test's next steps.
        self.env = {**os.environ, "CCLOUDVM_HOME": str(home), "CCLOUDVM_BACKGROUND_SNAPSHOTS": "0"}

    def __call__(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 1200,
        env: dict[str, str] | None = None,
        input: str | None = None,  # noqa: A002 - subprocess's own name
    ) -> Result:
        proc = subprocess.run(  # noqa: S603 - test harness, fixed argv
            [sys.executable, "-m", "ccloudvm", *args],
            env={**self.env, **(env or {})},
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"ccloudvm {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return result

    def instances(self) -> list[str]:
        return [p.name for p in (self.home / "instances").glob("*") if p.is_dir()]


@pytest.fixture
def cli(tmp_path: Path, served_image: ServedImage) -> Iterator[CLI]:
    home = tmp_path / "home"
    home.mkdir()
    write_image_definition(home, served_image)
    runner = CLI(home)
    try:
        yield runner
    finally:
        # Whatever happened, leave no VM behind, nor a background snapshot job.
        for name in runner.instances():
            runner("delete", name, check=False, timeout=120)
        stop_processes_of(home)


def stop_processes_of(home: Path) -> None:
    """Kill every process whose command line names `home` or whose CCLOUDVM_HOME is it
    (a detached `ccloudvm image snapshot` job and the QEMU it runs)."""
    marker = str(home).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline or b"CCLOUDVM_HOME=" + marker + b"\0" in environ:
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)


def qemu_pids(folder: Path) -> list[int]:
    """The QEMU processes whose command line names files in `folder` (an instance's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and f"{folder}/".encode() in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def libvirt_uri(tmp_path: Path) -> Iterator[str]:
    """A local libvirtd of the test's own (see tests/e2e/libvirt_daemon.py): its URI,
    qemu:///system?socket=<its socket in the test's folder>."""
    pytest.importorskip("libvirt", reason="libvirt-python is not installed (make libvirt)")
    with libvirt_daemon.local_daemon(tmp_path / "libvirt") as uri:
        yield uri


RemoteLibvirtFactory = Callable[[Sequence[Path]], AbstractContextManager[RemoteLibvirt]]


@pytest.fixture
def remote_libvirt_factory(tmp_path_factory: pytest.TempPathFactory) -> RemoteLibvirtFactory:
    """`with remote_libvirt_factory([folder, ...]) as remote:` a "remote" libvirt host on
    this machine (a libvirtd and an sshd in a private mount namespace) that sees each
    folder given as empty; `remote` is a RemoteLibvirt. Gone when the block ends."""
    missing = libvirt_daemon.remote_missing()
    if missing:
        pytest.skip(missing)

    def start(hide: Sequence[Path] = ()) -> AbstractContextManager[RemoteLibvirt]:
        return libvirt_daemon.remote_daemon(tmp_path_factory.mktemp("remote-libvirt"), hide)

    return start


@pytest.fixture
def remote_libvirt(remote_libvirt_factory: RemoteLibvirtFactory) -> Iterator[RemoteLibvirt]:
    """The "remote" libvirt host of remote_libvirt_factory, with nothing hidden."""
    with remote_libvirt_factory(()) as remote:
        yield remote
