"""The libvirt driver against the QEMU driver (issue 13): create-to-ready, same shape,
one run, interleaved. Prints figures; asserts nothing (these machines are noisy).

  qemu warm    `create debian` with the QEMU driver, from the shape's warm-boot snapshot
  qemu cold    the same with CCLOUDVM_WARM_BOOT=0 (what libvirt's path does: a cold boot)
  libvirt      `create --driver libvirt` on a private local libvirtd (qemu:///system)
  remote 1st   `create --driver libvirt --connect qemu+libssh://...` on a "remote" libvirtd
               and sshd in a namespace that hides this state: uploads the image, then boots
  remote 2nd   the same again: the image's volumes are there, nothing is uploaded

The daemons are the e2e tests' (tests/e2e/libvirt_daemon.py): root, libvirt-python and
`make test-sshd` are needed; without them the libvirt rows say why they are missing.

Usage: python bench/libvirt.py [--runs 1] [--image-cache DIR]
--image-cache: a state directory whose cache holds debian-12 (default: the e2e tests'
/var/tmp/ccloudvm-test-cache, built if missing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.user_path import fresh_home  # noqa: E402
from ccloudvm.images import catalog as images  # noqa: E402
from ccloudvm.state.paths import StateDir  # noqa: E402
from ccloudvm.vm import accel  # noqa: E402

SHAPE = ["--mem", "1024", "--cpus", "2", "--disk", "8"]


def timed(home: Path, *args: str, env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "ccloudvm", *args],
        env={**os.environ, "CCLOUDVM_HOME": str(home), "CCLOUDVM_BACKGROUND_SNAPSHOTS": "0",
             **(env or {})},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        check=True, cwd=ROOT,
    )  # fmt: skip
    return time.monotonic() - start


def create_delete(home: Path, name: str, *flags: str, env: dict[str, str] | None = None) -> float:
    seconds = timed(home, "create", "debian", "--name", name, *SHAPE, *flags, env=env)
    timed(home, "delete", name)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--image-cache", type=Path, default=Path("/var/tmp/ccloudvm-test-cache"))
    args = parser.parse_args()
    images.ensure_image(StateDir(args.image_cache), "debian-12")

    from tests.e2e import libvirt_daemon

    figures: dict[str, list[float]] = {}
    missing: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-libvirt-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        home = fresh_home(work, args.image_cache)
        timed(home, "image", "snapshot", "debian-12", *SHAPE[:4])  # qemu warm's snapshot
        local_problem = "needs root" if os.geteuid() != 0 else libvirt_daemon_problem()
        remote_problem = local_problem or libvirt_daemon.remote_missing()
        for run in range(args.runs):
            figures.setdefault("qemu warm", []).append(create_delete(home, f"w{run}"))
            figures.setdefault("qemu cold", []).append(
                create_delete(home, f"c{run}", env={"CCLOUDVM_WARM_BOOT": "0"})
            )
            if local_problem:
                missing["libvirt"] = local_problem
            else:
                with libvirt_daemon.local_daemon(work / f"local-{run}") as uri:
                    figures.setdefault("libvirt", []).append(
                        create_delete(home, f"l{run}", "--driver", "libvirt", "--connect", uri)
                    )
            if remote_problem:
                missing["remote"] = remote_problem
                continue
            remote_home = fresh_home(work, args.image_cache)
            # The "remote" host is this one: the acceleration a local VM gets here (its
            # libvirt may offer a KVM that hangs guests, which only the local probe sees).
            local_accel = accel.detect(mode="auto", run_dir=work).accel
            hide = [remote_home, args.image_cache]
            (work / f"remote-{run}").mkdir()
            with libvirt_daemon.remote_daemon(work / f"remote-{run}", hide) as remote:
                flags = ("--driver", "libvirt", "--connect", remote.uri, "--accel", local_accel)
                figures.setdefault("remote 1st", []).append(
                    create_delete(remote_home, f"r{run}", *flags)
                )
                figures.setdefault("remote 2nd", []).append(
                    create_delete(remote_home, f"s{run}", *flags)
                )

    print(f"create-to-ready, {' '.join(SHAPE)}, median of {args.runs} (seconds):")
    for name, values in figures.items():
        print(
            f"  {name:12} {statistics.median(values):6.1f}   ({', '.join(f'{v:.1f}' for v in values)})"
        )
    for name, why in missing.items():
        print(f"  {name:12} not measured: {why}")
    if "libvirt" in figures:
        cold = statistics.median(figures["qemu cold"])
        warm = statistics.median(figures["qemu warm"])
        lv = statistics.median(figures["libvirt"])
        print(f"  libvirt / qemu cold = {lv / cold:.2f}; libvirt / qemu warm = {lv / warm:.2f}")


def libvirt_daemon_problem() -> str | None:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (make libvirt)"
    return None


if __name__ == "__main__":
    main()
