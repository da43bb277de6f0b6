"""Reusable images on real VMs: build a workload once, create from the saved build
without provisioning, save a stopped instance, create from that, remove and prune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI

pytestmark = pytest.mark.e2e

WORKLOAD = str(Path(__file__).resolve().parents[1] / "workloads" / "e2e-build.yaml")


def _images(cli: CLI) -> dict[str, dict[str, object]]:
    return {i["name"]: i for i in json.loads(cli("images", "--json").out)}


def test_build_reuse_save_and_remove(cli: CLI) -> None:
    built = cli("build", WORKLOAD, "--accel", "tcg")
    assert "Bake a marker into the image" in built.err
    saved_builds = [n for n, i in _images(cli).items() if i["kind"] == "saved"]
    assert len(saved_builds) == 1, _images(cli)
    assert not cli.instances(), "the build VM must be gone after the build"
    assert "already built" in cli("build", WORKLOAD).err, "a second build must reuse the first"

    # create reuses the build: nothing is provisioned, the baked file is there
    reused = cli("create", WORKLOAD, "--name", "reuse1", "--mem", "1024")
    assert "using the saved build" in reused.err
    assert "Bake a marker" not in reused.err
    assert cli("run", "reuse1", "--", "cat", "/var/lib/ccloudvm-baked").out == "provisioned once\n"
    assert cli("run", "reuse1", "--", "hostname").out.strip() == "reuse1"
    keys = cli("run", "reuse1", "--", "sh", "-c", "cat ~/.ssh/authorized_keys").out
    assert len([k for k in keys.splitlines() if k.strip()]) == 1
    verify = cli("verify", "reuse1")
    assert "1 passed, 0 failed" in verify.out

    # image save: refused while running, then works on the stopped instance
    running = cli("image", "save", "reuse1", "mine", check=False)
    assert running.code == 1 and "stop" in running.err and "Traceback" not in running.err
    cli(
        "run",
        "reuse1",
        "--",
        "sh",
        "-c",
        "echo saved-by-user | sudo tee /var/lib/ccloudvm-user >/dev/null",
    )
    cli("stop", "reuse1")
    cli("image", "save", "reuse1", "mine")
    again = cli("image", "save", "reuse1", "mine", check=False)
    assert again.code == 2 and "exists already" in again.err
    assert _images(cli)["mine"]["kind"] == "saved"

    # a new instance from the saved image: its own identity, the user's data kept
    cli("create", "debian", "--image", "mine", "--name", "fromsave", "--mem", "1024")
    assert cli("run", "fromsave", "--", "cat", "/var/lib/ccloudvm-user").out == "saved-by-user\n"
    assert cli("run", "fromsave", "--", "hostname").out.strip() == "fromsave"
    machine_id = cli("run", "fromsave", "--", "cat", "/etc/machine-id").out.strip()
    assert len(machine_id) == 32

    # an image backing an instance is never removed
    refused = cli("image", "rm", "mine", check=False)
    assert refused.code == 1 and "backs an instance" in refused.err
    cli("delete", "fromsave")
    cli("image", "rm", "mine")
    assert "mine" not in _images(cli)
    cli("delete", "reuse1")
    cli("image", "prune")
    remaining = _images(cli)
    assert saved_builds[0] in remaining, "prune must keep the current build of a workload"
    assert not [p for p in Path(cli.home / "cache" / "tmp").glob("*")], "no partial files may stay"
