"""cloud-init-all's warm-boot wait and its entry point, against a stand-in for the guest's
cloud-init library (a small package on sys.path), a stand-in systemctl on PATH, and the
guest's devices as files: the imports done ahead, the console marker, the wait for a seed."""

from __future__ import annotations

import builtins
import os
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccloudvm.guest.keys import generate_ed25519
from ccloudvm.guest.seed import SeedConfig, write_seed_iso
from ccloudvm.images import cloud_init_all

FAKE_CLOUDINIT = {
    "__init__.py": "",
    "stages.py": (
        "class Init:\n"
        "    cfg = {'cloud_init_modules': ['seed-random', ['bootcmd', 'always']],\n"
        "           'cloud_config_modules': ['broken'], 'cloud_final_modules': None}\n"
    ),
    "config/__init__.py": "",
    "config/schema.py": "asked = []\ndef get_schema():\n    asked.append(True)\n    return {}\n",
    "config/cc_seed_random.py": "",
    "config/cc_bootcmd.py": "",
    "config/cc_broken.py": "raise RuntimeError('a module that fails to import')\n",
    "sources/__init__.py": "",
    "sources/DataSourceNoCloud.py": "",
    "cmd/__init__.py": "",
    "cmd/main.py": "calls = []\ndef main(argv):\n    calls.append(list(argv))\n    return 0\n",
}


@pytest.fixture
def cloudinit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The guest's cloud-init, as a package of stubs; sys.modules is restored after."""
    root = tmp_path / "site"
    for name, text in FAKE_CLOUDINIT.items():
        path = root / "cloudinit" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield sys.modules
    for name in set(sys.modules) - before:
        if name.startswith("cloudinit"):
            del sys.modules[name]


def _systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *answers: str) -> Path:
    """A systemctl on PATH that prints answers[n] on its n-th run (the last one after)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for n, answer in enumerate(answers):
        (bin_dir / f"jobs.{n}").write_text(answer)
    count = tmp_path / "count"
    count.write_text("0")
    script = bin_dir / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {count}); echo $((n + 1)) > {count}\n"
        f'f={bin_dir}/jobs.$n; [ -f "$f" ] || f={bin_dir}/jobs.{len(answers) - 1}\n'
        'echo "$@" >> ' + f"{tmp_path}/systemctl-args\n"
        'cat "$f"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cloud_init_all, "WAIT_ONLINE", "/bin/true")
    return count


def _seed(path: Path) -> None:
    cfg = SeedConfig(
        hostname="vm1", user_name="u", uid=1000, gid=1000, home="/home/u",
        authorized_keys=[], host_key=generate_ed25519("vm1-host"),
    )  # fmt: skip
    tmp = path.with_suffix(".tmp")
    write_seed_iso(tmp, cfg, "iid-vm1")
    os.replace(tmp, path)


def test_preload_imports_every_stage_module_and_survives_a_broken_one(
    cloudinit: dict[str, Any],
) -> None:
    cloud_init_all._preload()
    for name in (
        "cloudinit.sources.DataSourceNoCloud",
        "cloudinit.config.cc_seed_random",  # the '-' of a module name is a '_' in its file
        "cloudinit.config.cc_bootcmd",  # an entry with a frequency
    ):
        assert name in cloudinit, name
    assert "cloudinit.config.cc_broken" not in cloudinit  # it fails later, as in a cold boot
    assert cloudinit["cloudinit.config.schema"].asked == [True]


def test_settle_waits_until_only_its_own_unit_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = _systemctl(
        tmp_path, monkeypatch,
        "12 ccloudvm-cloud-init.service start running\n34 apt-daily.service start running\n",
        "35 sshd.service start waiting\n12 ccloudvm-cloud-init.service start running\n",
    )  # fmt: skip
    cloud_init_all._settle()
    assert count.read_text().strip() == "2"  # asked again after 0.2 s, then done
    assert (tmp_path / "systemctl-args").read_text().splitlines()[0] == (
        "list-jobs --no-legend --no-pager"
    )


def test_a_restore_waits_for_its_seed_then_flushes_it_and_sets_the_clock(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cloudinit: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _systemctl(tmp_path, monkeypatch, "")
    monkeypatch.setattr(cloud_init_all, "SEED_DEVICES", str(tmp_path / "vd[b-z]"))
    (tmp_path / "vdb").write_bytes(bytes(1 << 16))  # the blank seed of the snapshot
    rtc = tmp_path / "since_epoch"
    rtc.write_text("1796342400\n")
    flushed: list[tuple[int, int]] = []
    clock: list[tuple[int, float]] = []
    real_open = builtins.open

    def guest_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if file == "/sys/class/rtc/rtc0/since_epoch":
            file = rtc
        return real_open(file, *args, **kwargs)

    def ioctl(fd: int, request: int, arg: int) -> int:
        flushed.append((request, os.fstat(fd).st_size))
        return 0

    monkeypatch.setattr(cloud_init_all, "open", guest_open, raising=False)
    monkeypatch.setattr(cloud_init_all, "fcntl", types.SimpleNamespace(ioctl=ioctl))
    guest_time = types.SimpleNamespace(
        monotonic=time.monotonic, sleep=time.sleep, CLOCK_REALTIME=time.CLOCK_REALTIME,
        clock_settime=lambda which, value: clock.append((which, value)),
    )  # fmt: skip
    monkeypatch.setattr(cloud_init_all, "time", guest_time)

    restored = threading.Timer(0.3, _seed, args=(tmp_path / "vdc",))
    restored.start()
    try:
        cloud_init_all._wait_for_restore()
    finally:
        restored.join()

    assert capsys.readouterr().out == f"{cloud_init_all.WAITING_MARKER}\n"
    assert flushed == [(cloud_init_all.BLKFLSBUF, (tmp_path / "vdc").stat().st_size)]
    assert clock == [(time.CLOCK_REALTIME, 1796342400.0)]
    assert "cloudinit.config.cc_bootcmd" in cloudinit  # loaded before the marker


def test_main_runs_the_stages_at_once_when_the_seed_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cloudinit: dict[str, Any]
) -> None:
    monkeypatch.setattr(cloud_init_all, "SEED_DEVICES", str(tmp_path / "vd[b-z]"))
    monkeypatch.setattr(cloud_init_all, "WAIT_ONLINE", "/bin/true")
    monkeypatch.setattr(cloud_init_all, "RESULT_FILE", str(tmp_path / "none.json"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("TZ", raising=False)
    _seed(tmp_path / "vdb")
    assert cloud_init_all.main() == 0
    assert cloudinit["cloudinit.cmd.main"].calls == [
        ["cloud-init", "init", "--local"],
        ["cloud-init", "init"],
        ["cloud-init", "modules", "--mode=config"],
        ["cloud-init", "modules", "--mode=final"],
    ]
    assert os.environ["TZ"] == ":/etc/localtime"  # no stat of /etc/localtime per call
    assert "cloudinit.config.schema" not in cloudinit  # no preload on a cold boot
