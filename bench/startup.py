"""Start-up figures (issue 9): how long the commands that only read state take, as a user
types them (`python -m ccloudvm ...`, a new process each time). Prints figures; asserts
nothing (these machines are noisy). Goal: <= 150 ms for --help, instances and status.

  --help     the group's help
  instances  a fresh, empty state directory
  status     one stopped instance's record, as `create` then `stop` leave it (no QEMU)
  floor      `python -c pass`: the interpreter alone, which no change here can beat

Each figure is the median of --runs (default 7) runs, the commands interleaved; the
fastest run beside it is what a quiet machine gives (the median moves with other load).

Usage: python bench/startup.py [--runs 7]
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

from ccloudvm.state.instance_state import (  # noqa: E402
    ImageRef,
    InstanceFiles,
    InstanceState,
    save_state,
)
from ccloudvm.state.paths import StateDir  # noqa: E402

NAME = "bench"


def stopped_instance(home: Path) -> None:
    """An instance record as `create` leaves it after `stop`: its state file, no QEMU."""
    files = InstanceFiles(StateDir(home).instance_dir(NAME))
    files.dir.mkdir(parents=True)
    inst = InstanceState(
        name=NAME, workload="debian", image=ImageRef("debian-12", "k", "/nonexistent/disk.qcow2"),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10022,
        guest_user="ccloudvm", desired="stopped",
    )  # fmt: skip
    save_state(files, inst)


def wall_time(argv: list[str], home: Path) -> float:
    """One run of `argv` in a new process, in seconds; it must succeed."""
    start = time.monotonic()
    subprocess.run(  # noqa: S603 - fixed argv
        argv,
        env={**os.environ, "CCLOUDVM_HOME": str(home)},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        check=True, cwd=ROOT,
    )  # fmt: skip
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    parent = Path(tempfile.mkdtemp(prefix="ccloudvm-startup-"))
    try:
        empty, one = parent / "empty", parent / "one"
        empty.mkdir()
        stopped_instance(one)
        cli = [sys.executable, "-m", "ccloudvm"]
        cases = {
            "ccloudvm --help": (cli + ["--help"], empty),
            "ccloudvm instances": (cli + ["instances"], empty),
            f"ccloudvm status {NAME}": (cli + ["status", NAME], one),
            "python -c pass": ([sys.executable, "-c", "pass"], empty),
        }
        times: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(runs):  # interleaved, so a noisy second hurts every case alike
            for label, (argv, home) in cases.items():
                times[label].append(wall_time(argv, home))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    width = max(map(len, cases))
    for label, values in times.items():
        median, least = statistics.median(values) * 1000, min(values) * 1000
        print(f"{label:{width}}  {median:4.0f} ms  (fastest {least:4.0f} ms)")
    print(f"(median of {runs} runs each; goal <= 150 ms for the ccloudvm commands)")


if __name__ == "__main__":
    main()
