"""create / provision / logs / baremetal provision, through the CLI, with the VM replaced
by this host: `instance_create.ready` only records an instance and `connect_target` hands out a
LocalTarget, so the steps really run (here) and everything else is the real code."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ccloudvm.app import workflow
from ccloudvm.cli.main import main
from ccloudvm.instance import access
from ccloudvm.instance import create as instance_create
from ccloudvm.instance.checks import CreateRequest
from ccloudvm.remote.local import LocalTarget
from ccloudvm.state.instance_state import ImageRef, InstanceState, files_of, load_state, save_state
from ccloudvm.state.paths import StateDir
from tests.support.httpserver import serve_directory

WORKLOADS = Path(__file__).resolve().parents[1] / "workloads"


@pytest.fixture
def state() -> StateDir:
    return StateDir.from_env()  # the per-test CCLOUDVM_HOME of conftest.py


@pytest.fixture
def fake_vm(monkeypatch: pytest.MonkeyPatch, state: StateDir) -> list[CreateRequest]:
    """instance_create.ready records the instance without booting; steps run on this host."""
    made: list[CreateRequest] = []

    @contextlib.contextmanager
    def boot(st: StateDir, req: CreateRequest) -> Iterator[SimpleNamespace]:
        for mount in req.mounts:
            assert mount.host_path.is_dir()  # what the real one checks first
        made.append(req)
        files = files_of(st, req.name or "x")
        files.dir.mkdir(parents=True)
        inst = InstanceState(
            name=req.name or "x", workload=req.workload,
            image=ImageRef(name=req.image, key="k", disk="/nonexistent.qcow2"),
            mem_mib=1024, cpus=1, disk_gib=10, host_ip="127.0.0.2", ssh_port=2222,
            guest_user="u", workload_ref=req.workload_ref,
        )  # fmt: skip
        save_state(files, inst)
        yield SimpleNamespace(inst=inst, target=LocalTarget(inst.name))

    monkeypatch.setattr(instance_create, "ready", boot)
    monkeypatch.setattr(
        access, "connect_target", lambda st, name: contextlib.nullcontext(LocalTarget(name))
    )
    return made


def cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


STEPS = """image: debian-12
provision:
  - name: first step
    run: echo "first output"; echo first > {out}/first
  - name: second step
    run: |
      echo "line before the failure"
      {second}
  - name: third step
    run: touch {out}/third
"""


def test_a_failing_step_stops_create_keeps_the_instance_and_says_where_to_look(
    fake_vm: list[CreateRequest],
    state: StateDir,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workload = tmp_path / "w.yaml"
    workload.write_text(STEPS.format(out=tmp_path, second="exit 3"))
    assert cli("create", str(workload), "--name", "t1") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"first step \.\.\. OK", err) and "second step ... FAIL" in err
    assert "line before the failure" in err  # the step's last lines
    (line,) = error_lines(err)
    assert "provision step 'second step' failed with exit status 3" in line
    assert "ccloudvm logs t1 --provision" in line and "ccloudvm connect t1" in line
    assert not (tmp_path / "third").exists()
    inst = load_state(state, "t1")  # kept for inspection
    assert inst.provisioned is False
    log = workflow.provision_log(state, "t1").read_text()
    assert "===== provision t1 (workload w)" in log
    assert "==> step 1/3: first step\nfirst output\n<== step 1/3: first step: OK" in log
    assert "line before the failure\n<== step 2/3: second step: FAIL (exit status 3)" in log

    # logs --provision shows it; provision --verbose re-runs the steps, printing as it goes
    assert cli("logs", "t1", "--provision") == 0
    assert capsys.readouterr().out == log
    workload.write_text(STEPS.format(out=tmp_path, second="echo fixed now"))
    assert cli("provision", "t1", "--verbose") == 0
    err = capsys.readouterr().err
    assert "  first output" in err and "  fixed now" in err and "third step ... OK" in err
    assert load_state(state, "t1").provisioned is True
    log = workflow.provision_log(state, "t1").read_text()
    assert log.count("===== provision t1") == 2 and "fixed now" in log  # appended


def test_create_verbose_prints_the_output_as_it_comes_and_keeps_it(
    fake_vm: list[CreateRequest],
    state: StateDir,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workload = tmp_path / "w.yaml"
    workload.write_text(STEPS.format(out=tmp_path, second="echo second output"))
    assert cli("create", str(workload), "--name", "quiet") == 0
    err = capsys.readouterr().err
    assert "first output" not in err  # not verbose: only the OK lines
    assert "first output" in workflow.provision_log(state, "quiet").read_text()
    assert cli("create", str(workload), "--name", "loud", "--verbose") == 0
    assert "  second output" in capsys.readouterr().err


def test_logs_provision_before_any_provisioning_is_one_line(
    fake_vm: list[CreateRequest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("create", "debian", "--name", "plain") == 0
    capsys.readouterr()
    assert cli("logs", "plain", "--provision") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "'plain' has no provision log yet" in line and "ccloudvm provision plain" in line
    assert cli("logs", "plain", "--provision", "--cloud-init") == 2


def test_a_url_workload_is_fetched_once_per_create(
    fake_vm: list[CreateRequest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendered for the instance and, for the saved-build lookup, for the build name: one
    GET all the same."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    www = tmp_path / "www"
    www.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (www / "w.yaml").write_text(
        f"image: debian-12\nprovision: [{{name: s, run: touch {out}/ran}}]\n"
    )
    with serve_directory(www) as (base_url, server):
        assert cli("create", f"{base_url}/w.yaml", "--name", "u1") == 0
    assert [r.path for r in server.requests if r.method == "GET"] == ["/w.yaml"]
    assert (out / "ran").exists() and len(fake_vm) == 1


def test_provisioning_reuses_the_connection_readiness_was_seen_on(
    fake_vm: list[CreateRequest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_second_connection(st: StateDir, name: str) -> None:
        raise AssertionError("a second SSH connection was opened")

    monkeypatch.setattr(access, "connect_target", no_second_connection)
    workload = tmp_path / "w.yaml"
    workload.write_text(f"image: debian-12\nprovision: [{{name: s, run: touch {tmp_path}/ran}}]\n")
    assert cli("create", str(workload), "--name", "one") == 0
    assert (tmp_path / "ran").exists()


# ------------------------------------------------------------------ shared folders


MOUNT = "image: {image}\nvm:\n  mounts: [{{host: {host}, guest: /data}}]\n"


def test_a_failed_create_makes_no_folders_on_the_host(
    fake_vm: list[CreateRequest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "new" / "deeper"
    workload = tmp_path / "w.yaml"
    workload.write_text(MOUNT.format(image="no-such-image", host=folder))
    assert cli("create", str(workload), "--name", "m1") == 2
    assert "no image definition called 'no-such-image'" in error_lines(capsys.readouterr().err)[0]
    assert not (tmp_path / "new").exists()
    assert fake_vm == []


def test_folders_made_for_a_create_that_fails_later_are_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    @contextlib.contextmanager
    def failing_boot(st: StateDir, req: CreateRequest) -> Iterator[None]:
        assert all(m.host_path.is_dir() for m in req.mounts)
        raise workflow.UsageError("--mem 10 MiB is out of range")
        yield

    monkeypatch.setattr(instance_create, "ready", failing_boot)
    workload = tmp_path / "w.yaml"
    workload.write_text(MOUNT.format(image="debian-12", host=tmp_path / "new" / "deeper"))
    assert cli("create", str(workload), "--name", "m2") == 2
    assert "--mem 10 MiB is out of range" in error_lines(capsys.readouterr().err)[0]
    assert not (tmp_path / "new").exists()


def test_missing_workload_folders_are_made_just_before_the_instance(
    fake_vm: list[CreateRequest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "gopath"
    workload = tmp_path / "w.yaml"
    workload.write_text(MOUNT.format(image="debian-12", host=folder))
    assert cli("create", str(workload), "--name", "m3") == 0
    assert folder.is_dir()
    assert f"created {folder}" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["/sys/ccloudvm-test/gopath", "FILE/sub"])
def test_a_folder_that_cannot_be_made_is_one_line(
    where: str,
    fake_vm: list[CreateRequest],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "file").write_text("not a folder")
    host = where.replace("FILE", str(tmp_path / "file"))
    workload = tmp_path / "w.yaml"
    workload.write_text(MOUNT.format(image="debian-12", host=host))
    assert cli("create", str(workload), "--name", "m4") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert f"cannot create {host} to share it with the guest as /data" in line
    assert fake_vm == []


# ------------------------------------------------------------------ drives and CLI merging


def test_commas_in_drive_paths_are_escaped_for_qemu(
    state: StateDir, tmp_path: Path, fake_vm: list[CreateRequest]
) -> None:
    disk = tmp_path / "my,disk.img"
    disk.write_bytes(b"")
    workload = tmp_path / "w.yaml"
    workload.write_text(
        f"image: debian-12\nvm:\n  drives: [{{path: '{disk}', format: raw, options: cache=none}}]\n"
    )
    request, _ = workflow.build_request(state, str(workload), workflow.CreateOptions(name="d1"))
    assert [str(d) for d in request.drives] == [f"{tmp_path}/my,,disk.img,format=raw,cache=none"]


def test_a_missing_drive_is_refused_before_anything_is_made(
    fake_vm: list[CreateRequest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = tmp_path / "w.yaml"
    workload.write_text(f"image: debian-12\nvm:\n  drives: [{{path: {tmp_path}/none.img}}]\n")
    assert cli("create", str(workload), "--name", "d2") == 2
    assert f"drive {tmp_path}/none.img of workload 'w' does not exist" in capsys.readouterr().err
    assert fake_vm == []


def test_cli_ports_and_mounts_replace_the_workloads_clashing_ones(
    fake_vm: list[CreateRequest], tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    workload = tmp_path / "w.yaml"
    workload.write_text(
        "image: debian-12\nvm:\n  ports: ['8080:80', 9000]\n"
        f"  mounts: [{{host: {tmp_path / 'a'}, guest: /data}}]\n"
    )
    args = ["--port", "8080:443", "--mount", f"{tmp_path / 'b'}:/data"]
    assert cli("create", str(workload), "--name", "p1", *args) == 0
    (request,) = fake_vm
    assert [str(p) for p in request.ports] == ["8080:443", "9000:9000"]
    assert [(str(m.host_path), m.guest_path) for m in request.mounts] == [
        (str(tmp_path / "b"), "/data")
    ]


# ------------------------------------------------------------------ bare metal


@pytest.fixture
def test_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "metal"
    folder.mkdir()
    monkeypatch.setenv("CCLOUDVM_TEST_DIR", str(folder))
    return folder


BAREMETAL = str(WORKLOADS / "baremetal-provision.yaml")


def test_baremetal_provision_runs_the_steps_here(
    test_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As root the sudo step runs directly; otherwise through `sudo -n`, here a stand-in
    # that runs the command as the same user, so the test changes nothing outside test_dir.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n')
    (bin_dir / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert cli("baremetal", "provision", BAREMETAL, "--yes") == 0
    err = capsys.readouterr().err
    assert re.search(r"write as the user \.\.\. OK \(\d+\.\d s\)", err)
    assert "write as root ... OK" in err and "only in a VM" not in err
    user = pwd.getpwuid(os.getuid()).pw_name
    assert (test_dir / "who").read_text() == f"{user} True\n"  # the host user, bare_metal set
    assert (test_dir / "root-id").read_text() == f"{os.geteuid()}\n"
    assert not (test_dir / "vm-only").exists()


def test_baremetal_provision_asks_first(test_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("baremetal", "provision", BAREMETAL) == 2  # stdin is not a terminal here
    (line,) = error_lines(capsys.readouterr().err)
    assert "this would run 2 provision step(s) of workload 'baremetal-provision'" in line
    assert "changing this host" in line and "--yes" in line
    assert list(test_dir.iterdir()) == []


def test_baremetal_provision_refuses_sudo_steps_without_passwordless_sudo(
    test_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An ordinary user whose sudo wants a password: run as nobody with a sudo that says so.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sudo = bin_dir / "sudo"
    sudo.write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    sudo.chmod(0o755)
    code = (
        "import os, sys\n"
        "os.geteuid = lambda: 65534\n"
        "from ccloudvm.cli.main import main\n"
        f"main(['baremetal', 'provision', {BAREMETAL!r}, '--yes'])\n"
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False,
        cwd=Path(__file__).resolve().parents[2], timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert "step 'write as root' of workload 'baremetal-provision' runs as root" in line
    assert "passwordless sudo" in line
    assert list(test_dir.iterdir()) == []  # nothing ran


def test_a_failing_baremetal_step_is_one_line_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = tmp_path / "fails.yaml"
    workload.write_text("image: debian-12\nprovision: [{name: bad, run: 'echo why; exit 4'}]\n")
    assert cli("baremetal", "provision", str(workload), "--yes") == 2
    err = capsys.readouterr().err
    assert "bad ... FAIL" in err and "why" in err
    (line,) = error_lines(err)
    assert "provision step 'bad' failed with exit status 4" in line
    assert f"ccloudvm baremetal provision {workload}" in line


@pytest.fixture(autouse=True)
def _no_stdin_terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    yield


def test_create_records_what_proxy_propagation_wrote_and_status_shows_it(
    state: StateDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 10: create and status say what proxy propagation wrote (the guest's
    values, the password hidden, and where), or that it was turned off."""
    from ccloudvm.instance.status import status

    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://me:secret@127.0.0.1:3128")
    workload = tmp_path / "w.yaml"
    workload.write_text("image: debian-12\n")
    request, _ = workflow.build_request(state, str(workload), workflow.CreateOptions(name="px"))
    assert request.proxy.startswith("http_proxy=http://me:***@10.0.2.2:3128 ")
    assert "secret" not in request.proxy and "(in /etc/environment" in request.proxy
    off = workflow.build_request(
        state, str(workload), workflow.CreateOptions(name="px", propagate_proxy=False)
    )[0]
    assert off.proxy == "not propagated (--no-proxy-propagation)"

    files = files_of(state, "px")
    files.dir.mkdir(parents=True)
    save_state(files, InstanceState(
        name="px", workload="w", image=ImageRef("debian-12", "k", "/nonexistent.qcow2"),
        mem_mib=1024, cpus=1, disk_gib=10, host_ip="127.77.0.2", ssh_port=2222,
        guest_user="u", proxy=request.proxy,
    ))  # fmt: skip
    assert status(state, "px").proxy == request.proxy


def test_flags_win_over_the_workloads_sizes_and_both_over_the_hosts_defaults(
    state: StateDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 1: the accelerator's default sizes apply only to what neither a flag
    nor the workload's `vm:` set."""
    from ccloudvm.core.hostinfo import HostResources
    from ccloudvm.instance import checks

    monkeypatch.setattr(checks, "host_resources", lambda: HostResources(cpus=8, mem_mib=16384))
    workload = tmp_path / "w.yaml"
    workload.write_text("image: debian-12\nvm:\n  mem: 3G\n  disk: 30G\n")
    sized = workflow.build_request(state, str(workload), workflow.CreateOptions(name="s1"))[0]
    assert (sized.mem_mib, sized.cpus, sized.disk_gib) == (3072, None, 30)
    flagged = workflow.build_request(
        state, str(workload), workflow.CreateOptions(name="s1", mem_mib=1024, cpus=3)
    )[0]
    assert (flagged.mem_mib, flagged.cpus, flagged.disk_gib) == (1024, 3, 30)
    # What is left unset takes the default of how the VM runs: TCG here, KVM there.
    assert checks._check_sizes(sized, kvm=False) == (3072, 4, 30)
    assert checks._check_sizes(sized, kvm=True) == (3072, 4, 30)
    plain = workflow.build_request(state, "debian", workflow.CreateOptions(name="s1"))[0]
    assert checks._check_sizes(plain, kvm=False) == (2048, 4, 20)
    assert checks._check_sizes(plain, kvm=True) == (8192, 4, 20)
    assert checks._check_sizes(flagged, kvm=False) == (1024, 3, 30)
