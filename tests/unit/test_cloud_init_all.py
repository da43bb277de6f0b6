"""The guest's one-process cloud-init (ccloudvm/images/cloud_init_all.py) and how the
debian-12 recipe carries it into the image."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from ccloudvm.guest.keys import generate_ed25519
from ccloudvm.guest.seed import SeedConfig, write_seed_iso
from ccloudvm.images import catalog as images
from ccloudvm.images import cloud_init_all
from ccloudvm.images.build import BuildRecipe
from ccloudvm.state.paths import StateDir
from ccloudvm.vm import ready, warmboot

SCRIPT = "/usr/lib/ccloudvm/cloud-init-all"


def test_the_recipe_installs_the_module_as_it_is(tmp_path: Path) -> None:
    recipe = images.load_definition(StateDir(tmp_path), "debian-12").build
    assert recipe is not None
    source = Path(cloud_init_all.__file__).read_text()
    assert recipe.files[SCRIPT] == source
    compile(source, SCRIPT, "exec")  # the guest runs it as a script: python3 PATH
    assert 'if __name__ == "__main__":' in source
    unit = recipe.files["/etc/systemd/system/ccloudvm-cloud-init.service"]
    assert f"ExecStart=/usr/bin/python3 {SCRIPT}\n" in unit


def test_the_script_imports_nothing_of_ccloudvm() -> None:
    source = Path(cloud_init_all.__file__).read_text()
    assert "from ccloudvm" not in source and "import ccloudvm" not in source


def test_the_markers_are_the_ones_the_host_reads() -> None:
    assert cloud_init_all.WAITING_MARKER == warmboot.WAITING_MARKER
    assert cloud_init_all.RESULT_MARKER == ready.RESULT_MARKER


def test_a_changed_module_changes_the_recipe_and_its_key(tmp_path: Path) -> None:
    base = {"suite": "bookworm", "packages": ["cloud-init"]}
    named = BuildRecipe.from_mapping(
        {**base, "files": {SCRIPT: {"module": cloud_init_all.__name__}}}
    )
    inline = BuildRecipe.from_mapping({**base, "files": {SCRIPT: "print()\n"}})
    assert named.files[SCRIPT] == Path(cloud_init_all.__file__).read_text()
    assert named.canonical() != inline.canonical()


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ({"module": "os"}, "not a module of ccloudvm"),
        ({"module": "ccloudvm.images.no_such_module"}, "no module ccloudvm.images.no_such_module"),
        ({"module": "ccloudvm.nothing.here"}, "no module ccloudvm.nothing.here"),
        ({"module": "ccloudvm.images"}, "no module ccloudvm.images"),  # a package: no one file
        ({"module": "ccloudvm.images.x", "mode": 755}, "must be text or {module"),
        (7, "must be text or {module"),
    ],
)
def test_a_bad_file_entry_is_named(value: object, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace(".", r"\.").replace("{", r"\{")):
        BuildRecipe.from_mapping(
            {"suite": "bookworm", "packages": ["cloud-init"], "files": {SCRIPT: value}}
        )


def _seed(path: Path) -> Path:
    cfg = SeedConfig(
        hostname="vm1", user_name="u", uid=1000, gid=1000, home="/home/u",
        authorized_keys=[], host_key=generate_ed25519("vm1-host"),
    )  # fmt: skip
    write_seed_iso(path, cfg, "iid-vm1")
    return path


def test_the_seed_ccloudvm_writes_is_found_on_its_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blank = tmp_path / "vdb"
    blank.write_bytes(bytes(1 << 20))  # a warm-boot snapshot's seed disk before a restore
    other = tmp_path / "vdc"
    other.write_bytes(b"\0" * 32768 + b"\1CD001\1" + b"\0" * 4096)  # an ISO, not a seed
    monkeypatch.setattr(cloud_init_all, "SEED_DEVICES", str(tmp_path / "vd[b-z]"))
    assert not cloud_init_all._has_seed(str(blank))
    assert not cloud_init_all._has_seed(str(other))
    assert not cloud_init_all._has_seed(str(tmp_path / "missing"))
    assert cloud_init_all._seed_device() is None
    seed = _seed(tmp_path / "vdd")
    assert cloud_init_all._has_seed(str(seed))
    assert cloud_init_all._seed_device() == str(seed)


class FakeCloudInit:
    """cloud-init's main(): records each stage, fails the ones named, and notes whether
    systemd had been told READY=1 when the stage began."""

    def __init__(self, notify: socket.socket, failing: tuple[str, ...] = ()) -> None:
        self.notify = notify
        self.failing = failing
        self.stages: list[tuple[str, bool]] = []
        self.ready = False

    def __call__(self, argv: list[str]) -> object:
        assert argv[0] == "cloud-init"
        with contextlib.suppress(BlockingIOError):
            self.ready = self.ready or self.notify.recv(64) == b"READY=1"
        stage = " ".join(argv[1:])
        self.stages.append((stage, self.ready))
        if stage == "init --local" and "crash" in self.failing:
            raise RuntimeError("cloud-init crashed")
        return 1 if stage in self.failing else 0


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setattr(cloud_init_all, "WAIT_ONLINE", "/bin/true")
    monkeypatch.setattr(cloud_init_all, "RESULT_FILE", str(tmp_path / "result.json"))
    return server


def _outputs() -> tuple[int, int]:
    sys.stdout.flush()
    return os.dup(1), os.dup(2)


def test_the_stages_run_in_order_and_sshd_may_start_after_init(
    notify: socket.socket, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "result.json").write_text(json.dumps({"v1": {"errors": []}}, indent=2))
    cloud_init = FakeCloudInit(notify)
    assert cloud_init_all.run_stages(cloud_init, _outputs()) == 0
    assert cloud_init.stages == [
        ("init --local", False),
        ("init", False),
        ("modules --mode=config", True),  # READY=1 came after the init stages
        ("modules --mode=final", True),
    ]
    assert f'{ready.RESULT_MARKER} {{"v1":{{"errors":[]}}}}\n' in capfd.readouterr().out


def test_a_failed_stage_fails_the_unit_after_the_others_ran(
    notify: socket.socket, capfd: pytest.CaptureFixture[str]
) -> None:
    cloud_init = FakeCloudInit(notify, failing=("init",))
    assert cloud_init_all.run_stages(cloud_init, _outputs()) == 1
    assert [stage for stage, _ in cloud_init.stages][-1] == "modules --mode=final"
    assert ready.RESULT_MARKER not in capfd.readouterr().out  # no result.json: nothing to say


def test_systemd_hears_ready_even_when_the_local_stage_crashes(notify: socket.socket) -> None:
    with pytest.raises(RuntimeError, match="crashed"):
        cloud_init_all.run_stages(FakeCloudInit(notify, failing=("crash",)), _outputs())
    assert notify.recv(64) == b"READY=1"  # sshd is not held back by a broken cloud-init


class TeeingCloudInit(FakeCloudInit):
    """As cloud-init does in each stage: point stdout at a new `tee -a LOG` whose own
    output is whatever stdout was, then write the stage's line."""

    def __init__(self, notify: socket.socket, log: Path) -> None:
        super().__init__(notify)
        self.log = log
        self.tees: list[Any] = []

    def __call__(self, argv: list[str]) -> object:
        import subprocess

        tee = subprocess.Popen(["tee", "-a", str(self.log)], stdin=subprocess.PIPE, stdout=1)  # noqa: S603,S607
        assert tee.stdin is not None
        os.dup2(tee.stdin.fileno(), 1)
        self.tees.append(tee)
        os.write(1, f"Cloud-init v. 22.4.2 running '{' '.join(argv[1:])}'\n".encode())
        return super().__call__(argv)


def test_each_stage_is_logged_once_in_one_process(
    notify: socket.socket, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 10: `logs --cloud-init` showed stage N's lines N times, as each
    stage's tee wrote into the one before it. Every stage starts on the unit's output."""
    (tmp_path / "result.json").write_text(json.dumps({"v1": {"errors": []}}))
    log = tmp_path / "cloud-init-output.log"
    cloud_init = TeeingCloudInit(notify, log)
    assert cloud_init_all.run_stages(cloud_init, _outputs()) == 0
    for tee in reversed(cloud_init.tees):  # chained ones end last to first
        assert tee.stdin is not None
        tee.stdin.close()
        tee.wait(timeout=10)
    lines = log.read_text().splitlines()
    assert len(lines) == 4 and len(set(lines)) == 4, lines
    assert capfd.readouterr().out.count("Cloud-init v. 22.4.2 running 'init'") == 1
