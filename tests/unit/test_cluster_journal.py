"""The Python side of the record-before-change journal (ccloudvm.cluster.journal), which
undoes each entry with the shell's undo (templates/cluster/_undo.sh.j2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ccloudvm.cluster.journal import (
    Journal,
    JournalError,
    decode_word,
    encode_word,
    parse_line,
    undo_argv,
    undo_script,
)

# The stand-in for a host program: logs its argv and answers from the host's description.
STUB = """\
import json, os, sys
argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]]
with open(os.environ["FAKE_HOST"]) as f:
    host = json.load(f)
with open(host["log"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
joined = " ".join(argv)
for prefix, status, output in host["answers"]:
    if joined.startswith(prefix):
        print(output, end="")
        sys.exit(status)
if any(joined.startswith(f) for f in host["failing"]):
    print(joined + ": Operation not permitted")
    sys.exit(1)
if argv[:3] == ["ip", "link", "show"]:
    sys.exit(0 if argv[-1] in host["existing"] else 1)
if argv[:2] == ["iptables", "-w"] and "-C" in argv:
    sys.exit(0 if "rule" in host["existing"] else 1)
"""
STUBBED = ("ip", "iptables", "iptables-save", "nft", "sysctl", "rm", "cp", "rmdir", "docker")


class FakeHost:
    """Runs the journal's undo (the real shell) on a host whose programs are stand-ins:
    they log each call and answer `ip link show` and `iptables -C` from a set of existing
    things. Writing a sysctl goes through `sysctl -w`, so it is logged too."""

    def __init__(
        self,
        tmp_path: Path,
        existing: set[str] | None = None,
        failing: set[str] | None = None,
        answers: Sequence[tuple[str, int, str]] = (),
    ) -> None:
        self.bin = tmp_path / "fake-bin"
        self.bin.mkdir(exist_ok=True)
        for tool in STUBBED:
            (self.bin / tool).write_text(f"#!{sys.executable}\n{STUB}")
            (self.bin / tool).chmod(0o755)
        self.log = tmp_path / "fake-calls"
        self.log.write_text("")
        self.config = tmp_path / "fake-host.json"
        self.config.write_text(
            json.dumps(
                {
                    "log": str(self.log),
                    "existing": sorted(existing or ()),
                    "failing": sorted(failing or ()),
                    "answers": list(answers),
                }
            )
        )

    @property
    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        argv = list(argv)
        if argv[:2] == ["bash", "-c"]:
            argv[2] = argv[2].replace(
                '\nundo_entry "$@"', '\nset_sysctl() { sysctl -q -w "$1=$2"; }\nundo_entry "$@"'
            )
        env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "FAKE_HOST": str(self.config),
        }
        done = subprocess.run(  # noqa: S603
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
        )
        return done.returncode, done.stdout


def test_record_appends_once_and_checks_the_format(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "sub" / "journal")
    journal.record("link", "ciao_br")
    journal.record("link", "ciao_br")
    journal.record("sysctl", "net.ipv4.ip_forward", "0")
    assert journal.lines() == ["link ciao_br", "sysctl net.ipv4.ip_forward 0"]
    assert journal.has("link", "ciao_br") and not journal.has("link", "ciao")
    with pytest.raises(JournalError, match="unknown journal entry kind"):
        journal.record("route", "x")
    with pytest.raises(JournalError, match="needs 2 argument"):
        journal.record("sysctl", "only-key")
    with pytest.raises(JournalError, match="empty"):
        parse_line("   ")


def test_undo_goes_newest_first_and_skips_what_never_happened(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    for words in (
        ("link", "ciao_br"),
        ("link", "ciaovlan"),
        ("sysctl", "net.ipv4.ip_forward", "0"),
        ("iptables", "-t", "filter", "-I", "FORWARD", "-i", "ciao_br", "-j", "ACCEPT"),
    ):
        journal.record(*words)
    host = FakeHost(tmp_path, existing={"ciao_br", "rule"})  # ciaovlan was never made: a crash
    assert journal.undo(host) == []
    assert host.calls == [
        ["iptables", "-w", "-t", "filter", "-C", "FORWARD", "-i", "ciao_br", "-j", "ACCEPT"],
        ["iptables", "-w", "-t", "filter", "-D", "FORWARD", "-i", "ciao_br", "-j", "ACCEPT"],
        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"],
        ["ip", "link", "show", "dev", "ciaovlan"],
        ["ip", "link", "show", "dev", "ciao_br"],
        ["ip", "link", "del", "ciao_br"],
    ]
    assert not journal.exists()


def test_undo_keeps_failures_and_other_kinds(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    journal.record("link", "ciao_br")
    journal.record("file", str(tmp_path / "f"))
    journal.record("dir", str(tmp_path / "d"))
    host = FakeHost(tmp_path, existing={"ciao_br"}, failing={"rm -rf"})
    failed = journal.undo(host, kinds=("file", "dir"))
    assert len(failed) == 1 and failed[0].startswith(f"dir {tmp_path}/d: rm -rf")
    assert journal.entries() == [["link", "ciao_br"], ["dir", str(tmp_path / "d")]]
    assert ["ip", "link", "del", "ciao_br"] not in host.calls


def test_undo_refuses_to_remove_the_root(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    path.write_text("dir /\n")
    failed = Journal(path).undo(FakeHost(tmp_path))
    assert failed and "refusing" in failed[0]
    assert path.read_text() == "dir /\n"


def _real(argv: Sequence[str]) -> tuple[int, str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)  # noqa: S603
    return done.returncode, done.stdout + done.stderr


def test_pidfile_stops_the_named_process_only(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])  # noqa: S603
    other = subprocess.Popen(["sleep", "60"])  # noqa: S603
    try:
        mine, wrong = tmp_path / "sleep.pid", tmp_path / "wrong.pid"
        mine.write_text(f"{sleeper.pid}\n")
        wrong.write_text(f"{other.pid}\n")
        journal = Journal(tmp_path / "journal")
        journal.record("pidfile", "sleep", str(mine))
        journal.record("pidfile", "dnsmasq", str(wrong))  # the pid was reused by another program
        assert journal.undo(_real) == []
        deadline = time.monotonic() + 5
        while sleeper.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.poll() is not None
        assert other.poll() is None
        assert not mine.exists() and not wrong.exists()
    finally:
        for proc in (sleeper, other):
            proc.kill()
            proc.wait()


def _nft_host(tmp_path: Path, rules: str) -> FakeHost:
    """iptables-nft, with the table in use and these rules in it."""
    return FakeHost(
        tmp_path,
        answers=[
            ("iptables -V", 0, "iptables v1.8.9 (nf_tables)\n"),
            ("iptables-save", 0, "*filter\n"),
            ("iptables -w -t", 0, rules),
        ],
    )


@pytest.mark.parametrize(
    ("rules", "dropped"),
    [
        ("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n", True),
        ("-P INPUT ACCEPT\n-A INPUT -p tcp -j ACCEPT\n", False),  # someone else's rule now
        ("-P INPUT DROP\n", False),
    ],
)
def test_a_table_iptables_made_goes_only_when_empty(
    tmp_path: Path, rules: str, dropped: bool
) -> None:
    journal = Journal(tmp_path / "journal")
    journal.record("iptables-table", "filter")
    host = _nft_host(tmp_path, rules)
    assert journal.undo(host) == []
    assert (["nft", "delete", "table", "ip", "filter"] in host.calls) is dropped


@pytest.mark.parametrize(
    "word", ["my dir", "", "a\nb", "it's", "100%", "dé", "$(reboot)", "\\x41", "-I"]
)
def test_words_round_trip_on_one_line(word: str) -> None:
    encoded = encode_word(word)
    assert decode_word(encoded) == word
    assert encoded and not any(c.isspace() for c in encoded)
    assert set(encoded) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~/:=,+@-%"
    )


def test_a_path_with_a_space_is_one_word(tmp_path: Path) -> None:
    """The audit's case: `dir .../my dir/c` must remove that folder, not `.../my`."""
    journal = Journal(tmp_path / "journal")
    journal.record("dir", str(tmp_path / "my dir" / "c"))
    assert journal.lines() == [f"dir {tmp_path}/my%20dir/c"]
    host = FakeHost(tmp_path)
    assert journal.undo(host) == []
    assert host.calls == [["rm", "-rf", "--", str(tmp_path / "my dir" / "c")]]


def test_a_journal_that_cannot_be_rewritten_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path / "journal")
    journal.record("file", str(tmp_path / "gone"))
    journal.record("dir", str(tmp_path / "stuck"))
    before = journal.path.read_text()

    def denied(**_: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("ccloudvm.cluster.journal.tempfile.mkstemp", denied)
    with pytest.raises(JournalError, match="cannot rewrite the journal .*Permission denied"):
        journal.undo(FakeHost(tmp_path, failing={"rm -rf"}))
    assert journal.path.read_text() == before  # every record kept


def test_backup_puts_the_original_back(tmp_path: Path) -> None:
    original, copy = tmp_path / "conf dir" / "c.yaml", tmp_path / "backup" / "c.yaml"
    original.parent.mkdir()
    copy.parent.mkdir()
    original.write_text("ours\n")
    copy.write_text("theirs\n")
    journal = Journal(tmp_path / "journal")
    journal.record("backup", str(original), str(copy))
    assert journal.undo(_real) == []
    assert original.read_text() == "theirs\n" and not copy.exists()


def test_statedir_goes_last_and_only_when_everything_else_is_undone(tmp_path: Path) -> None:
    state = tmp_path / "clusters" / "c"
    journal = Journal(state / "journal")
    journal.record("statedir", str(tmp_path / "clusters"))
    journal.record("statedir", str(state))
    journal.record("dir", str(state / "run"))
    (state / "run").mkdir()
    failing = FakeHost(tmp_path, failing={"rm -rf"})
    assert len(journal.undo(failing)) == 1
    assert [e[0] for e in journal.entries()] == ["statedir", "statedir", "dir"]
    assert journal.undo(_real) == []
    assert not (tmp_path / "clusters").exists()


def test_the_undo_is_the_shells_and_shellcheck_clean(tmp_path: Path) -> None:
    argv = undo_argv(["link", "ciao_br"])
    assert argv[:2] == ["bash", "-c"] and argv[-2:] == ["link", "ciao_br"]
    assert "\nundo_entry() {\n" in argv[2]  # templates/cluster/_undo.sh.j2, as the guest has it
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is needed (apt-get install shellcheck)"
    script = tmp_path / "undo.sh"
    script.write_text("#!/bin/bash\n" + undo_script())
    result = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True)  # noqa: S603
    assert result.returncode == 0, result.stdout


def test_a_backup_that_cannot_be_put_back_is_kept_copy_and_all(tmp_path: Path) -> None:
    """The undo stops at the first failing command: the copy of the original is never
    removed unless it was put back."""
    copy = tmp_path / "backup" / "c.yaml"
    copy.parent.mkdir()
    copy.write_text("theirs\n")
    gone = tmp_path / "gone" / "c.yaml"  # its folder went: cp cannot put the file back
    journal = Journal(tmp_path / "journal")
    journal.record("backup", str(gone), str(copy))
    failed = journal.undo(_real)
    assert len(failed) == 1 and failed[0].startswith(f"backup {gone} {copy}: cp: ")
    assert copy.read_text() == "theirs\n"
    assert journal.entries() == [["backup", str(gone), str(copy)]]
