"""What `ccloudvm connect` and `ccloudvm ssh-config` hand to the system ssh.

The instance is a saved state and a stand-in QEMU process (a real `sleep` whose command
line names the instance's pid file); the system ssh itself reads the result with -G,
which resolves the configuration without connecting anywhere.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccloudvm.core.errors import StateError
from ccloudvm.instance import access
from ccloudvm.state.instance_state import ImageRef, InstanceFiles, InstanceState, save_state
from ccloudvm.state.paths import StateDir

SSH = shutil.which("ssh")
pytestmark = pytest.mark.skipif(SSH is None, reason="the ssh client is not installed")


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "home")
    files = InstanceFiles(state.instance_dir("dev"))
    files.dir.mkdir(parents=True)
    save_state(files, InstanceState(
        name="dev", workload="debian", image=ImageRef("debian-12", "k", "/c/disk.qcow2"),
        mem_mib=1024, cpus=1, disk_gib=8, host_ip="127.77.0.2", ssh_port=10023,
        guest_user="ccloudvm",
    ))  # fmt: skip
    state.private_key.write_text("a key\n")  # ssh -G leaves out identity files that are missing
    files.known_hosts.write_text("[127.77.0.2]:10023 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\n")
    return state


@pytest.fixture
def running(state: StateDir) -> Iterator[None]:
    files = InstanceFiles(state.instance_dir("dev"))
    argv0 = f"qemu-system-x86_64 -pidfile {files.pidfile}"
    qemu = subprocess.Popen([argv0, "300"], executable=shutil.which("sleep"))  # noqa: S603
    try:
        deadline = time.monotonic() + 10  # until exec() has finished
        while not Path(f"/proc/{qemu.pid}/cmdline").read_bytes().startswith(argv0.encode()):
            assert time.monotonic() < deadline, "the stand-in QEMU did not start"
            time.sleep(0.01)
        files.pidfile.write_text(f"{qemu.pid}\n")
        yield
    finally:
        qemu.kill()
        qemu.wait(10)


def _resolved(argv: list[str]) -> dict[str, list[str]]:
    """What ssh makes of these arguments, without connecting: each option's values."""
    result = subprocess.run(  # noqa: S603 - ssh -G only prints
        [argv[0], "-G", *argv[1:]], capture_output=True, text=True, timeout=30, check=True
    )
    config: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key, []).append(value)
    return config


def _assert_pinned_and_ours_only(config: dict[str, list[str]], state: StateDir) -> None:
    files = InstanceFiles(state.instance_dir("dev"))
    assert config["stricthostkeychecking"] == ["true"]
    assert config["userknownhostsfile"] == [str(files.known_hosts)]
    assert config["identitiesonly"] == ["yes"]
    assert config["identityfile"] == [str(state.private_key)]
    assert config["user"] == ["ccloudvm"]
    assert (config["hostname"], config["port"]) == (["127.77.0.2"], ["10023"])


def test_connect_pins_the_host_key_and_uses_only_our_key(state: StateDir, running: None) -> None:
    argv = access.ssh_argv(state, "dev")
    assert not any("StrictHostKeyChecking=no" in arg for arg in argv)
    _assert_pinned_and_ours_only(_resolved(argv), state)


def test_connect_with_a_command_passes_it_after_the_options(state: StateDir, running: None) -> None:
    argv = access.ssh_argv(state, "dev", ["uname", "-a"])
    assert argv[-4:] == ["ccloudvm@127.77.0.2", "--", "uname", "-a"]


def test_connect_to_a_stopped_instance_says_how_to_start_it(state: StateDir) -> None:
    with pytest.raises(StateError, match="'dev' is not running") as info:
        access.ssh_argv(state, "dev")
    assert info.value.hint == "start it with 'ccloudvm start dev'"


def test_ssh_config_stanza_is_what_ssh_reads(state: StateDir, tmp_path: Path) -> None:
    stanza = access.ssh_config(state, "dev")
    assert "StrictHostKeyChecking no" not in stanza
    config_file = tmp_path / "ssh_config"
    config_file.write_text(stanza)
    assert SSH is not None
    _assert_pinned_and_ours_only(_resolved([SSH, "-F", str(config_file), "dev"]), state)


def _exec_of(monkeypatch: pytest.MonkeyPatch, state: StateDir, *args: str) -> list[str]:
    """The argv `ccloudvm ARGS` would become (os.execv stood in for)."""
    from ccloudvm.cli import access
    from ccloudvm.cli import main as cli

    became: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        became.append(argv)
        raise SystemExit(0)

    monkeypatch.setenv("CCLOUDVM_HOME", str(state.root))
    monkeypatch.setattr(access.os, "execv", execv)
    with pytest.raises(SystemExit):
        cli.main(list(args))
    return became[0]


def test_run_quotes_every_word_and_keeps_streams_apart(
    monkeypatch: pytest.MonkeyPatch, state: StateDir, running: None
) -> None:
    argv = _exec_of(monkeypatch, state, "run", "dev", "--", "echo", "a b", "$(id)", ";x")
    assert "-T" in argv and "-tt" not in argv  # no terminal asked for, none given
    assert argv[-2:] == ["--", "echo 'a b' '$(id)' ';x'"]  # one string, each word quoted
    argv = _exec_of(monkeypatch, state, "run", "-t", "-w", "/srv/my app", "dev", "--", "top")
    assert "-tt" in argv and argv[-1] == "cd -- '/srv/my app' && exec top"
    # the options after NAME, as the README writes them
    after = _exec_of(monkeypatch, state, "run", "dev", "-t", "-w", "/srv/my app", "--", "top")
    assert after == argv
    # after --, -t is the command's own
    own = _exec_of(monkeypatch, state, "run", "dev", "--", "-t")
    assert own[-1] == "-t" and "-T" in own


def test_connect_with_a_command_gets_a_terminal_and_shell_is_its_alias(
    monkeypatch: pytest.MonkeyPatch, state: StateDir, running: None
) -> None:
    argv = _exec_of(monkeypatch, state, "shell", "dev", "--", "htop")
    assert "-tt" in argv and argv[-2:] == ["--", "htop"]
    interactive = _exec_of(monkeypatch, state, "connect", "dev")
    assert not {"-t", "-tt", "-T"} & set(interactive)


def test_run_at_a_terminal_gets_one_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch, state: StateDir, running: None
) -> None:
    """Issue 11 item 4: with stdin and stdout both terminals, `run dev -- top` behaves as
    over ssh (a pty); -T refuses one; a pipe on either side gets none."""
    import io
    import sys

    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(sys, "stdout", _Terminal())
    assert "-tt" in _exec_of(monkeypatch, state, "run", "dev", "--", "top")
    refused = _exec_of(monkeypatch, state, "run", "dev", "-T", "--", "top")
    assert "-T" in refused and "-tt" not in refused
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # ccloudvm run dev -- top | less
    piped = _exec_of(monkeypatch, state, "run", "dev", "--", "top")
    assert "-T" in piped and "-tt" not in piped
