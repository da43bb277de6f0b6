"""Shell completion (scripts, commands, options, instance/workload/image names, odd names, a
broken state directory) and `ccloudvm version`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ccloudvm.cli import completion
from ccloudvm.vm import accel
from tests.unit.test_cli_errors import _make_instance, _one_line_error, ccloudvm


def _complete(words: str, shell: str = "bash", env: dict[str, str] | None = None) -> list[str]:
    """What the shell would be offered after `words` (the last word is being typed)."""
    parts = words.split(" ")
    # fish passes the word being typed itself; bash and zsh its index.
    cword = parts[-1] if shell == "fish" else str(len(parts) - 1)
    variables = {"_CCLOUDVM_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
                 "COMP_CWORD": cword, **(env or {})}  # fmt: skip
    result = ccloudvm(env=variables)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == "", result.stderr
    if shell == "bash":
        return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]
    if shell == "zsh":
        return result.stdout.splitlines()[1::3]
    return [line.split(",", 1)[1].split("\t")[0] for line in result.stdout.splitlines() if line]


def _home() -> Path:
    return Path(os.environ["CCLOUDVM_HOME"])


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_is_clicks_for_ccloudvm(shell: str) -> None:
    result = ccloudvm("completion", shell)
    assert result.returncode == 0, result.stderr
    assert "_CCLOUDVM_COMPLETE" in result.stdout and f"{shell}_complete" in result.stdout


def test_an_unknown_shell_names_the_choices() -> None:
    _one_line_error(ccloudvm("completion", "tcsh"), 2, "'tcsh' is not one of", "bash", "fish")


def test_commands_and_options() -> None:
    assert {"start", "status", "stop"} <= set(_complete("ccloudvm st"))
    assert "completion" in _complete("ccloudvm comp")
    assert {"--all", "--timeout"} <= set(_complete("ccloudvm stop --"))
    assert {"--format", "--json", "--quiet"} <= set(_complete("ccloudvm instances --"))
    assert set(_complete("ccloudvm instances --format ")) == {"table", "json", "yaml", "csv"}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_instance_names(shell: str) -> None:
    for name in ("dev", "demo", "web"):
        _make_instance(name)
    assert _complete("ccloudvm stop ", shell) == ["demo", "dev", "web"]
    assert _complete("ccloudvm status de", shell) == ["demo", "dev"]
    assert _complete("ccloudvm delete dev w", shell) == ["web"]
    assert _complete("ccloudvm run w", shell) == ["web"]
    assert _complete("ccloudvm image save d", shell) == ["demo", "dev"]
    assert _complete("ccloudvm cluster setup w", shell) == ["web"]


def test_odd_names_are_left_out() -> None:
    _make_instance("dev")
    for odd in ("odd name", "new\nline", "colon:name", "-dash", "Upper"):
        folder = _home() / "instances" / odd
        folder.mkdir(parents=True)
        (folder / "state.json").write_text("{}\n")
    workloads = _home() / "workloads"
    workloads.mkdir()
    (workloads / "my work.yaml").write_text("image: debian-12\n")
    (workloads / "mine.yaml").write_text("image: debian-12\n")
    for shell in ("bash", "zsh", "fish"):
        assert _complete("ccloudvm stop ", shell) == ["dev"]
        names = _complete("ccloudvm create m", shell)
        assert names == ["mine"], names


@pytest.mark.parametrize(
    "name", ["odd name", "new\nline", "colon:name", "-dash", "", "tab\there", "ok-name"]
)
def test_completable(name: str) -> None:
    assert completion.completable(name) == (name == "ok-name")


def test_workload_names_and_paths(tmp_path: Path) -> None:
    assert {"debian", "docker"} <= set(_complete("ccloudvm create d"))
    assert "go" in _complete("ccloudvm workload show g")
    assert "debian" in _complete("ccloudvm build de")
    # A path is left to the shell's file completion.
    result = ccloudvm(env={"_CCLOUDVM_COMPLETE": "bash_complete",
                           "COMP_WORDS": f"ccloudvm create {tmp_path}/", "COMP_CWORD": "2"})  # fmt: skip
    assert result.stdout.splitlines() == [f"file,{tmp_path}/"]


def test_image_names() -> None:
    assert "debian-12" in _complete("ccloudvm create debian --image deb")
    assert "debian-12" in _complete("ccloudvm image build deb")


@pytest.mark.parametrize("broken", ["a file", "unreadable", "damaged"])
def test_a_broken_state_directory_gives_no_names(tmp_path: Path, broken: str) -> None:
    home = tmp_path / "home"
    if broken == "a file":
        home.write_text("")
    elif broken == "unreadable":
        (home / "instances").mkdir(parents=True)
        (home / "instances" / "x").symlink_to(home / "instances" / "x")  # a link loop
        (home / "workloads").mkdir()
        (home / "workloads" / "w.yaml").write_bytes(b"\xff\xfe: [")
        (home / "images").mkdir()
        (home / "images" / "i.yaml").write_text(": : :")
    else:
        (home / "instances" / "dev").mkdir(parents=True)
        (home / "instances" / "dev" / "state.json").write_text("not json")
    env = {"CCLOUDVM_HOME": str(home)}
    assert _complete("ccloudvm stop ", env=env) in ([], ["dev"])
    assert "debian" in _complete("ccloudvm create deb", env=env) or broken == "a file"
    _complete("ccloudvm create debian --image ", env=env)  # no traceback, whatever it holds


def test_a_callback_that_fails_gives_nothing() -> None:
    def boom(state: object) -> list[str]:
        raise RuntimeError("the state dir is gone")

    complete = completion._completer(boom)  # type: ignore[arg-type]
    assert complete(None, None, "") == []  # type: ignore[arg-type]


# ------------------------------------------------------------------ version


def test_version_text() -> None:
    result = ccloudvm("version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ccloudvm      0.1.0 (Python ")
    assert lines[1].startswith("qemu          ")
    assert lines[2].startswith("acceleration  KVM") or lines[2].startswith("acceleration  TCG")
    assert lines[3].startswith(f"state         {_home()}")


def test_version_json() -> None:
    data = json.loads(ccloudvm("version", "--json").stdout)
    assert data["ccloudvm"] == "0.1.0" and data["state_dir"] == str(_home())
    assert data["accel"] in ("kvm", "tcg") and data["accel_reason"]
    assert not (_home() / "run" / "accel.json").exists()  # asked nothing, cached nothing


def test_version_follows_ccloudvm_accel_and_says_so() -> None:
    data = json.loads(ccloudvm("version", "--json", env={"CCLOUDVM_ACCEL": "tcg"}).stdout)
    assert (data["accel"], data["accel_mode"], data["accel_mode_from"]) == (
        "tcg", "tcg", "$CCLOUDVM_ACCEL",
    )  # fmt: skip
    assert "from $CCLOUDVM_ACCEL" in ccloudvm("version", env={"CCLOUDVM_ACCEL": "tcg"}).stdout


def test_version_without_qemu(tmp_path: Path) -> None:
    result = ccloudvm("version", "--json", env={"PATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["qemu"] is None
    text = ccloudvm("version", env={"PATH": str(tmp_path)}).stdout
    assert "qemu-system-x86_64 not installed" in text


def test_dash_dash_version_is_kept() -> None:
    assert ccloudvm("--version").stdout.strip() == "ccloudvm, version 0.1.0"


def test_would_use_reads_the_probe_cache_but_never_writes_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "dev/kvm").write_text("")
    (root / "proc").mkdir()
    (root / "proc/cpuinfo").write_text("flags : fpu vmx\n")
    run_dir = tmp_path / "run"
    first = accel.would_use(mode="auto", run_dir=run_dir, sys_root=root)
    assert first.accel == "kvm" and "not yet confirmed" in first.reason
    assert not run_dir.exists()
    run_dir.mkdir()
    (run_dir / "accel.json").write_text(json.dumps({
        "boot_id": accel._boot_id(), "kernel": "k",
        "result": {"accel": "tcg", "nested": False, "reason": "a test guest hung"},
    }))  # fmt: skip
    assert (
        accel.would_use(mode="auto", run_dir=run_dir, sys_root=root).reason == "a test guest hung"
    )
    assert accel.would_use(mode="tcg", run_dir=run_dir, sys_root=root).accel == "tcg"
    (root / "sys/module/kvm_pvm").mkdir(parents=True)
    assert "paravirtual" in accel.would_use(mode="auto", run_dir=run_dir, sys_root=root).reason
