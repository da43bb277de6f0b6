"""Snapshot and suspend benchmark: seconds of `suspend`, `resume`, `snapshot save` and
`snapshot restore` of one running instance (1 GiB, 2 vCPUs, one 9p share, as a
developer's VM has), median of --runs, wall time of the real CLI. Also the size of
the saved state and a disk-only snapshot of the stopped instance.

Prints figures; asserts nothing (these machines are noisy). The instance is booted once
and deleted at the end; the debian-12 image is built into --home first if it is not
there (bench/boot.py uses the same home).

Usage: python bench/snapshots.py [--runs 3] [--home /var/tmp/ccloudvm-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "bench-snap"
MEM = "1024"
CPUS = "2"


def ccloudvm(home: Path, *args: str) -> tuple[float, str]:
    """Run the real CLI; return its wall time in seconds and its stdout."""
    start = time.monotonic()
    result = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "ccloudvm", *args],
        env={**os.environ, "CCLOUDVM_HOME": str(home), "CCLOUDVM_BACKGROUND_SNAPSHOTS": "0"},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"ccloudvm {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return time.monotonic() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--home", type=Path, default=Path("/var/tmp/ccloudvm-bench"))
    args = parser.parse_args()
    home: Path = args.home
    home.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(home / "instances" / NAME, ignore_errors=True)  # an interrupted run's
    ccloudvm(home, "image", "build", "debian-12")
    shared = Path(tempfile.mkdtemp(prefix="bench-snap-"))
    figures: dict[str, list[float]] = {"suspend": [], "resume": [], "save": [], "restore": []}
    try:
        boot, _ = ccloudvm(home, "create", "debian", "--name", NAME, "--mem", MEM,
                           "--cpus", CPUS, "--mount", f"{shared}:/mnt/shared")  # fmt: skip
        for run in range(args.runs):
            figures["suspend"].append(ccloudvm(home, "suspend", NAME)[0])
            figures["resume"].append(ccloudvm(home, "resume", NAME)[0])
            figures["save"].append(ccloudvm(home, "snapshot", "save", NAME, f"s{run}")[0])
            figures["restore"].append(ccloudvm(home, "snapshot", "restore", NAME, f"s{run}")[0])
        rows = json.loads(ccloudvm(home, "snapshot", "list", NAME, "--json")[1])
        state_mib = statistics.median(r["state_mib"] for r in rows)
        ccloudvm(home, "stop", NAME)
        disk_only, _ = ccloudvm(home, "snapshot", "save", NAME, "cold")
    finally:
        subprocess.run(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "ccloudvm", "delete", NAME],
            env={**os.environ, "CCLOUDVM_HOME": str(home)},
            stdin=subprocess.DEVNULL, capture_output=True, check=False, cwd=ROOT,
        )  # fmt: skip
        shutil.rmtree(shared, ignore_errors=True)
    print(f"snapshots: VM {CPUS} vCPUs, {MEM} MiB, one 9p share; median of {args.runs} "
          f"(create {boot:.1f} s)")  # fmt: skip
    for what, label in (("suspend", "suspend"), ("resume", "resume"),
                        ("save", "snapshot save"), ("restore", "snapshot restore")):  # fmt: skip
        values = figures[what]
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {label:17} {statistics.median(values):6.1f} s   ({runs})")
    print(f"  saved state       {state_mib:6.0f} MiB")
    print(f"  disk-only save    {disk_only:6.1f} s   (stopped instance)")


if __name__ == "__main__":
    main()
