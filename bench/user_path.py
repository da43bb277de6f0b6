"""The path a new user walks (issue 10): plain commands, no size flags, fresh state.

Prints figures; asserts nothing (these machines are noisy). One run, interleaved rounds,
medians of --runs:

  D  a plain `ccloudvm create debian` (no flags) to ready, its size's snapshot made
  F  the first create right after `ccloudvm image build` (which made the default
     size's snapshot): goal within 1.2x of D
  S  a create of a size that has no snapshot yet (it boots cold and leaves the snapshot
     to a background job): goal no slower than a cold create
  cold  the same plain create with CCLOUDVM_WARM_BOOT=0
  N  the naive boot of bench/boot.py (stock image and cloud-init, SSH polled every 2 s),
     same default size: goal N/D >= 4 (--skip-naive leaves it out: it builds an image)
  demo  `make demo` on a fresh state directory whose cache holds the image only
  start-up  `ccloudvm --help`, `instances` and `status NAME` (goal <= 150 ms)

Usage: python bench/user_path.py [--runs 3] [--image-cache DIR] [--skip-naive]
--image-cache: a state directory whose cache already holds debian-12 (e.g. the e2e
tests' /var/tmp/ccloudvm-test-cache); its image is hard-linked in, so no build is timed.
Without it the image is built once into the first state directory, and the demo's gets
that image hard-linked in (never its snapshots).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ccloudvm.core.hostinfo import host_resources  # noqa: E402
from ccloudvm.images import catalog as images  # noqa: E402
from ccloudvm.state.paths import StateDir  # noqa: E402
from ccloudvm.vm import accel  # noqa: E402


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> float:
    """The real CLI as a user types it; its wall time in seconds."""
    start = time.monotonic()
    subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "ccloudvm", *args],
        env={**os.environ, "CCLOUDVM_HOME": str(home), **(env or {})},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        check=True, cwd=ROOT,
    )  # fmt: skip
    return time.monotonic() - start


def fresh_home(parent: Path, image_cache: Path | None) -> Path:
    """A new state directory; with `image_cache`, its debian-12 image hard-linked in."""
    home = Path(tempfile.mkdtemp(prefix="user-", dir=parent))
    if image_cache is not None:
        source = StateDir(image_cache)
        key = images.load_definition(source, "debian-12").key
        target = images.images_dir(StateDir(home))
        target.mkdir(parents=True)
        subprocess.run(  # noqa: S603,S607 - fixed argv
            ["cp", "-al", str(images.images_dir(source) / f"debian-12-{key}"), str(target)],
            check=True,
        )
    return home


def create_and_delete(
    home: Path, name: str, *flags: str, env: dict[str, str] | None = None
) -> float:
    seconds = run(home, "create", "debian", "--name", name, *flags, env=env)
    run(home, "delete", name)
    return seconds


def wait_background(home: Path, timeout: float = 900) -> None:
    """Let a background snapshot job finish, so it does not slow the next figure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = subprocess.run(  # noqa: S603,S607 - fixed argv
            ["pgrep", "-f", "image snapshot debian-12"], capture_output=True, check=False
        )
        if busy.returncode != 0:
            return
        time.sleep(2)


def startup(home: Path, args: list[str], runs: int = 10) -> float:
    return statistics.median(run(home, *args) for _ in range(runs))


def median(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} s   ({', '.join(f'{v:.1f}' for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parent", type=Path, default=Path("/var/tmp/ccloudvm-bench-user"))
    parser.add_argument("--image-cache", type=Path)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    args.parent.mkdir(parents=True, exist_ok=True)
    home = fresh_home(args.parent, args.image_cache)
    state = StateDir(home)
    acc = accel.detect(mode=accel.requested_mode(None), run_dir=state.run)
    host = host_resources()
    print(
        f"host: {os.cpu_count()} CPUs, {host.mem_mib} MiB; {acc.accel} ({acc.reason}); "
        f"default VM: {host.default_cpus(acc.is_kvm)} vCPUs, {host.default_mem_mib(acc.is_kvm)} MiB"
    )

    build = run(home, "image", "build", "debian-12")
    first = create_and_delete(home, "first")
    d_runs: list[float] = []
    s_runs: list[float] = []
    cold_runs: list[float] = []
    no_warm = {"CCLOUDVM_WARM_BOOT": "0"}
    for i in range(args.runs):
        d_runs.append(create_and_delete(home, f"plain{i}"))
        # A size no snapshot has: 64 MiB more each round.
        s_runs.append(create_and_delete(home, f"new{i}", "--mem", str(1536 + 64 * i)))
        wait_background(home)
        cold_runs.append(create_and_delete(home, f"cold{i}", env=no_warm))

    n_line = "N  naive boot             (skipped: --skip-naive)"
    if not args.skip_naive:
        from bench import boot

        boot.MEM = str(host.default_mem_mib(acc.is_kvm))
        boot.CPUS = str(host.default_cpus(acc.is_kvm))
        boot.stock_definition(home)
        stock = images.ensure_image(state, "debian-12-stock")
        n_runs = [boot.naive_boot(state, stock, i) for i in range(args.runs)]
        n_line = f"N  naive boot          {median(n_runs)}   N/D = {statistics.median(n_runs) / statistics.median(d_runs):.1f}"

    # The image only (the one built above unless --image-cache named one), as labelled.
    demo_home = fresh_home(args.parent, args.image_cache or home)
    start = time.monotonic()
    subprocess.run(  # noqa: S603,S607 - the README's own command
        ["make", "-s", "demo"], cwd=ROOT, env={**os.environ, "CCLOUDVM_HOME": str(demo_home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    demo = time.monotonic() - start
    run(demo_home, "status", "demo")
    startup_help = startup(demo_home, ["--help"])
    startup_instances = startup(demo_home, ["instances"])
    startup_status = startup(demo_home, ["status", "demo"])
    run(demo_home, "delete", "demo")

    print(f"image build (default snapshot incl.) {build:6.1f} s")
    print(
        f"F  first create after it {first:6.1f} s   F/D = {first / statistics.median(d_runs):.2f}"
    )
    print(f"D  plain create          {median(d_runs)}")
    print(
        f"S  create of a new size  {median(s_runs)}   S/cold = {statistics.median(s_runs) / statistics.median(cold_runs):.2f}"
    )
    print(f"   cold create           {median(cold_runs)}")
    print(n_line)
    print(f"make demo, fresh state   {demo:6.1f} s   (image cached, no snapshot)")
    print(
        f"start-up: --help {startup_help * 1000:.0f} ms, instances {startup_instances * 1000:.0f} ms, "
        f"status {startup_status * 1000:.0f} ms (median of 10)"
    )
    for folder in (home, demo_home):
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
