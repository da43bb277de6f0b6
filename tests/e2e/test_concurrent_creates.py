"""Four creates started at once in one state directory all become ready (issue 8, item 7).

Before the address reservation, of three creates started together one failed in each
run with QEMU's "Could not set up host forwarding rule": each chose the same loopback
address and port before any QEMU had bound it.

The four boot warm from one snapshot made first: they choose and bind their forwards in
the same launch step as cold boots do, and four cold boots under TCG on a loaded 2-core
CI machine took longer than the boot timeout (one reached sshd after 388 s of its own
boot and 900 s of waiting).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.e2e.conftest import CLI

NAMES = [f"together-{n}" for n in range(1, 5)]


def test_four_creates_at_once_all_become_ready(cli: CLI) -> None:
    cli("image", "snapshot", "debian-12", "--mem", "768", "--cpus", "1")
    started = [
        subprocess.Popen(  # noqa: S603 - the tool under test, fixed argv
            [
                sys.executable,
                "-m",
                "ccloudvm",
                "create",
                "debian",
                "--name",
                name,
                "--mem",
                "768",
                "--cpus",
                "1",
                "--disk",
                "8",
                "--timeout",
                "1500",
            ],
            env=cli.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in NAMES
    ]
    outcomes = [p.communicate(timeout=1800) for p in started]
    for name, process, (out, err) in zip(NAMES, started, outcomes, strict=True):
        assert process.returncode == 0, f"{name} exited {process.returncode}:\n{out}\n{err}"

    for name, (out, err) in zip(NAMES, outcomes, strict=True):
        assert "booting cold" not in out + err, f"{name} did not boot warm:\n{out}\n{err}"

    listing = {row["name"]: row for row in json.loads(cli("instances", "--json").out)}
    assert sorted(listing) == NAMES
    assert {row["state"] for row in listing.values()} == {"running"}
    endpoints = [row["ssh"] for row in listing.values()]
    assert len(set(endpoints)) == 4, endpoints  # each its own address and port
    for name in NAMES:
        assert cli("run", name, "--", "hostname").out.strip() == name
