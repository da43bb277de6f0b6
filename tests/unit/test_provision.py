"""Provision steps and checks run for real on this host through LocalTarget.

This is the bare-metal reuse: the very ProvisionStep list a VM gets runs here unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ccloudvm.app.provision import StepFailed, fetch_to_cache, run_checks, run_steps
from ccloudvm.core.errors import UsageError
from ccloudvm.core.hostinfo import HostUser
from ccloudvm.guest.proxy import ProxySettings
from ccloudvm.remote.local import LocalTarget
from ccloudvm.state.paths import StateDir
from ccloudvm.workloads.definition import Check, ProvisionStep, load_workload
from ccloudvm.workloads.templating import Download, TemplateContext
from tests.support.httpserver import serve_directory


class RecordingTarget(LocalTarget):
    """A LocalTarget that also remembers the commands it ran (to check how steps run)."""

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, argv: list[str], **kwargs: object) -> int:  # type: ignore[override]
        self.commands.append(list(argv))
        return super().run(argv, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def _workdirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("ccloudvm-*")}


def test_steps_run_in_order_as_script_files_and_clean_up(tmp_path: Path) -> None:
    out = tmp_path / "out"
    steps = [
        ProvisionStep(name="first", script=f"echo first >> {out}\n"),
        ProvisionStep(
            name="second", script=f'echo "second $WHO $OWN" >> {out}\n', env=(("OWN", "mine"),)
        ),
    ]
    before = _workdirs()
    target = RecordingTarget()
    run_steps(target, steps, env={"WHO": "all"})
    assert out.read_text() == "first\nsecond all mine\n"
    runs = [c for c in target.commands if c[0] == "bash"]
    assert len(runs) == 2
    for command in runs:  # bash -eu FILE, never bash -c TEXT
        assert command[:2] == ["bash", "-eu"] and re.fullmatch(
            r"/tmp/ccloudvm-\w+/step-\d\.sh", command[2]
        )
    assert _workdirs() == before  # the work folder is gone


def test_bash_eu_stops_a_step_at_its_first_error(tmp_path: Path) -> None:
    marker = tmp_path / "after"
    with pytest.raises(StepFailed):
        run_steps(LocalTarget(), [ProvisionStep(name="s", script=f"false\ntouch {marker}\n")])
    assert not marker.exists()
    with pytest.raises(StepFailed):
        run_steps(
            LocalTarget(), [ProvisionStep(name="u", script=f'echo "$UNSET_VAR"\ntouch {marker}\n')]
        )
    assert not marker.exists()


def test_failure_names_the_step_shows_the_tail_and_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    later = tmp_path / "later"
    steps = [
        ProvisionStep(name="noisy", script="for i in $(seq 1 40); do echo line$i; done\nexit 7\n"),
        ProvisionStep(name="never", script=f"touch {later}\n"),
    ]
    with pytest.raises(
        StepFailed, match="provision step 'noisy' failed with exit status 7"
    ) as info:
        run_steps(LocalTarget(), steps, failure_hint="look at it")
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    assert info.value.hint == "look at it"
    assert info.value.tail == [f"line{i}" for i in range(26, 41)]
    assert not later.exists()
    err = capsys.readouterr().err
    assert "noisy ... FAIL" in err
    assert "line40" in err and "line25" not in err


def test_success_lines(capsys: pytest.CaptureFixture[str]) -> None:
    run_steps(LocalTarget(), [ProvisionStep(name="quiet step", script="echo hidden\n")])
    err = capsys.readouterr().err
    assert re.search(r"quiet step \.\.\. OK \(\d+\.\d s\)", err)
    assert "hidden" not in err  # output is kept unless verbose or failing
    run_steps(LocalTarget(), [ProvisionStep(name="loud", script="echo shown\n")], verbose=True)
    assert "shown" in capsys.readouterr().err


def test_log_receives_every_line(tmp_path: Path) -> None:
    lines: list[str] = []
    run_steps(LocalTarget(), [ProvisionStep(name="a", script="echo x; echo y\n")], log=lines.append)
    assert lines[:3] == ["==> step 1/1: a", "x", "y"]
    assert re.fullmatch(r"<== step 1/1: a: OK \(\d+\.\d s\)", lines[3]) and len(lines) == 4
    lines.clear()
    with pytest.raises(StepFailed):
        run_steps(
            LocalTarget(), [ProvisionStep(name="r", script="echo z; exit 5\n", sudo=True)],
            log=lines.append,
        )  # fmt: skip
    assert lines[:2] == ["==> step 1/1: r (as root)", "z"]
    assert lines[2].startswith("<== step 1/1: r: FAIL (exit status 5)")


def test_copy_step_installs_the_file_with_its_mode(tmp_path: Path) -> None:
    src = tmp_path / "motd"
    src.write_text("hello\n")
    dest = tmp_path / "etc" / "motd"
    run_steps(
        LocalTarget(), [ProvisionStep(name="c", copy_src=src, copy_dest=str(dest), copy_mode=0o640)]
    )
    assert dest.read_text() == "hello\n"
    assert oct(dest.stat().st_mode & 0o777) == oct(0o640)


def test_download_helper_fetches_on_the_host_caches_and_installs(
    tmp_path: Path, no_proxy_env: None
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "image.img").write_bytes(b"IMAGE" * 1000)
    state = StateDir(tmp_path / "state")
    state.ensure()
    (state.user_workloads).mkdir()
    host = HostUser("u", os.getuid(), os.getgid(), "u", tmp_path, tmp_path / "go", "", "")
    with serve_directory(www) as (base_url, server):
        url = base_url.rstrip("/") + "/image.img"
        (state.user_workloads / "dl.yaml").write_text(
            "image: x\nprovision:\n  - name: fetch\n    run: |\n"
            f"      {{{{ download('{url}', '{tmp_path}/local/image.img') }}}}\n"
        )
        ctx = TemplateContext(host, "vm1", ProxySettings(), bare_metal=True)
        w = load_workload(state, "dl", ctx)
        run_steps(LocalTarget(), w.provision)
        run_steps(LocalTarget(), w.provision)  # again: served from the host's cache
        gets = [r for r in server.requests if r.method == "GET"]
    assert (tmp_path / "local" / "image.img").read_bytes() == b"IMAGE" * 1000
    assert len(gets) == 1
    assert w.provision[0].uploads[0].cache_path.is_file()


def test_bare_metal_runs_a_loaded_workload_unchanged(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.user_workloads.mkdir()
    (state.user_workloads / "metal.yaml").write_text(
        """
image: debian-12
provision:
  - name: only in a VM
    only: vm
    run: touch {{ vars.dir }}/vm-only
  - name: write as the user
    run: echo "{{ user.name }}" > {{ vars.dir }}/who
  - name: use an env var
    env: {GREETING: "hello {{ instance.name }}"}
    run: echo "$GREETING" > {{ vars.dir }}/greeting
checks:
  - {name: who is right, run: "grep -qx {{ user.name }} {{ vars.dir }}/who"}
  - {name: greeting is right, run: "grep -qx 'hello metal' {{ vars.dir }}/greeting"}
  - {name: vm step was skipped, run: "test ! -e {{ vars.dir }}/vm-only"}
"""
    )
    host = HostUser("me", os.getuid(), os.getgid(), "me", tmp_path, tmp_path / "go", "", "")
    ctx = TemplateContext(
        host, "metal", ProxySettings(), extra={"dir": str(tmp_path)}, bare_metal=True
    )
    w = load_workload(state, "metal", ctx)
    run_steps(LocalTarget(), w.provision)
    assert (tmp_path / "who").read_text() == "me\n"
    assert run_checks(LocalTarget(), w.checks) == (3, 0)


def test_run_checks_counts_and_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    checks = [
        Check(name="passes", run="true\n"),
        Check(name="fails", run="echo 'reason it failed'\nexit 1\n"),
        Check(name="passes too", run="test 1 -eq 1\n"),
    ]
    assert run_checks(LocalTarget(), checks) == (2, 1)
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == "2 passed, 1 failed"
    assert "fails ... FAIL" in captured.err and "reason it failed" in captured.err
    assert re.search(r"^passes \.\.\. PASS \(\d+\.\d s\)$", captured.err, re.MULTILINE)
    assert "passes too ... PASS" in captured.err


def test_no_checks_still_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_checks(LocalTarget(), []) == (0, 0)
    assert capsys.readouterr().out.strip() == "0 passed, 0 failed"


def test_downloads_of_a_workload_from_a_url_are_checked_again_when_fetched(
    tmp_path: Path, no_proxy_env: None
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "f").write_bytes(b"data")
    with serve_directory(www) as (base_url, server):
        url = base_url.rstrip("/") + "/f"
        with pytest.raises(UsageError, match="may not fetch from 127.0.0.1"):
            fetch_to_cache(url, tmp_path / "cache" / "f", public_only=True)
        assert server.requests == [] and not (tmp_path / "cache" / "f").exists()
        item = Download(url, tmp_path / "cache" / "g", "dl-g", str(tmp_path / "g"), restricted=True)
        with pytest.raises(UsageError, match="may not fetch"):
            run_steps(LocalTarget(), [ProvisionStep(name="s", script="true\n", uploads=(item,))])
        assert server.requests == []
        fetch_to_cache(url, tmp_path / "cache" / "f")  # a local workload's download is fine
    assert (tmp_path / "cache" / "f").read_bytes() == b"data"
