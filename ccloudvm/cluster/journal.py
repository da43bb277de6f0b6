"""The record-before-change journal: what a cluster changed on a machine, so it can be undone.

One change per line, its kind first, written (and synced) BEFORE the change is made, so
an undo from the journal is complete even after a crash half-way: an entry whose change
never happened is simply skipped. The cluster shell scripts write the same format
(templates/cluster/_common.sh.j2); this module is the Python side, used for the
bare-metal namespace and as a fallback when a cleanup script cannot run. Each entry is
undone by the shell's own undo (templates/cluster/_undo.sh.j2, `undo_entry`), which
this module runs on the host: one implementation, in the guest and here.

    netns NAME                    ip netns del NAME (after killing what runs in it)
    link NAME                     ip link del NAME
    sysctl KEY OLD                sysctl KEY=OLD
    iptables -t T -A|-I CHAIN ... iptables -t T -D CHAIN ...
    iptables-table T              nft delete table ip T, if iptables-nft made it and it is empty
    pidfile COMM PATH             kill the process in PATH if its name is COMM; rm PATH
    file PATH / dir PATH          rm -f PATH / rm -rf PATH
    backup PATH COPY              put COPY (the original, copied aside) back at PATH
    statedir PATH                 rmdir PATH if empty, after everything else is undone
    exec ARGV...                  run ARGV (an undo command the script chose)
    docker NAME                   docker rm -f NAME

Words are separated by single spaces and percent-encoded: every byte outside
A-Z a-z 0-9 _ . ~ / : = , + @ - is written %XX, and an empty word is %00. So any
argument round-trips, and reading a line never evaluates its text.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

from ccloudvm.state.paths import resource_dir
from ccloudvm.workloads.templating import make_environment

Runner = Callable[[Sequence[str]], tuple[int, str]]
"""Runs argv as root on the machine the journal describes; returns (status, output)."""

KINDS = (
    "netns",
    "link",
    "sysctl",
    "iptables",
    "iptables-table",
    "pidfile",
    "file",
    "backup",
    "dir",
    "statedir",
    "exec",
    "docker",
)
_ARITY = {
    "iptables-table": 1,
    "netns": 1,
    "link": 1,
    "sysctl": 2,
    "pidfile": 2,
    "file": 1,
    "backup": 2,
    "dir": 1,
    "statedir": 1,
    "docker": 1,
}
UNDO_TEMPLATE = "cluster/_undo.sh.j2"
_SAFE = "/:=,+@~"  # with quote()'s own letters, digits and _.- : the shell side's set
_EMPTY = "%00"


class JournalError(ValueError):
    """A journal line that cannot be undone as written."""


def encode_word(word: str) -> str:
    """One journal word: percent-encoded UTF-8, %00 for an empty word."""
    if "\0" in word:
        raise JournalError("a journal word cannot hold a NUL byte")
    return quote(word, safe=_SAFE, errors="surrogateescape") if word else _EMPTY


def decode_word(word: str) -> str:
    """The inverse of encode_word (also of the shell's journal_line)."""
    return unquote_to_bytes(word).decode("utf-8", errors="surrogateescape").replace("\0", "")


def format_line(*words: str) -> str:
    return " ".join(encode_word(word) for word in words)


def parse_line(line: str) -> list[str]:
    """Split one journal line into decoded words and check its kind and arity."""
    words = [decode_word(word) for word in line.split()]
    if not words:
        raise JournalError("empty journal line")
    kind = words[0]
    if kind not in KINDS:
        raise JournalError(f"unknown journal entry kind {kind!r}")
    arity = _ARITY.get(kind)
    if arity is not None and len(words) - 1 != arity:
        raise JournalError(f"journal entry {shlex.join(words)!r} needs {arity} argument(s)")
    if kind in ("iptables", "exec") and len(words) < 2:
        raise JournalError(f"journal entry {line!r} has no arguments")
    return words


def _display(line: str) -> str:
    """A journal line as a person reads it: decoded, shell-quoted."""
    return shlex.join(decode_word(word) for word in line.split())


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.is_file()

    def lines(self) -> list[str]:
        """The journal's lines as written (encoded), oldest first."""
        if not self.path.is_file():
            return []
        return [line for line in self.path.read_text().splitlines() if line.strip()]

    def entries(self) -> list[list[str]]:
        """The journal's entries as decoded words, oldest first."""
        return [[decode_word(word) for word in line.split()] for line in self.lines()]

    def has(self, *words: str) -> bool:
        return list(words) in self.entries()

    def record(self, *words: str) -> None:
        """Append one change, once, and make it durable before the caller makes it."""
        line = format_line(*words)
        parse_line(line)
        if self.has(*words):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def undo(self, run: Runner, *, kinds: Collection[str] | None = None) -> list[str]:
        """Undo entries newest first (only `kinds`, if given); return those that failed.

        Entries undone are dropped from the journal; the file goes when it is empty.
        statedir entries go last, once nothing else is left, and only if empty. A
        journal that cannot be rewritten raises JournalError: its records are never
        silently dropped.
        """
        kept: list[str] = []
        failed: list[str] = []
        statedirs: list[str] = []
        for line in reversed(self.lines()):
            kind = decode_word(line.split()[0])
            if kinds is not None and kind not in kinds:
                kept.append(line)
                continue
            if kind == "statedir":
                statedirs.append(line)
                continue
            try:
                _undo_entry(parse_line(line), run)
            except (JournalError, OSError) as exc:
                failed.append(f"{_display(line)}: {exc}")
                kept.append(line)
        if kept:
            kept += statedirs
            statedirs = []
        self._rewrite(list(reversed(kept)))
        for line in statedirs:  # newest (deepest) first
            run(["rmdir", "--", parse_line(line)[1]])
        return failed

    def _rewrite(self, lines: list[str]) -> None:
        """Replace the journal by `lines` (atomically), or remove it when there are none."""
        if not self.path.exists():
            return
        try:
            if not lines:
                self.path.unlink()
                return
            # A new file renamed over the old: works when the journal itself is not ours
            # to write (made by root through sudo) but its folder is.
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".journal.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write("".join(f"{line}\n" for line in lines))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError as exc:
            raise JournalError(
                f"cannot rewrite the journal {self.path} ({exc.strerror or exc}); "
                f"it still lists {len(self.lines())} change(s), {len(lines)} of them not undone"
            ) from exc


@functools.cache
def undo_script() -> str:
    """The shell's undo (templates/cluster/_undo.sh.j2, the cluster scripts' own) as a
    `bash -c` script: `undo_entry KIND ARGS...` with the entry's words as arguments."""
    env = make_environment(False, [resource_dir("templates")])
    functions = env.get_template(UNDO_TEMPLATE).render()
    return f'set -eu\n{functions}\nundo_entry "$@"\n'


def undo_argv(words: Sequence[str]) -> list[str]:
    """The command that undoes one journal entry (decoded words), run as root."""
    return ["bash", "-c", undo_script(), "ccloudvm-undo", *words]


def _undo_entry(words: Sequence[str], run: Runner) -> None:
    status, output = run(undo_argv(words))
    if status != 0:
        tail = output.strip().splitlines()[-1:] or [f"exit status {status}"]
        raise JournalError(tail[0].removeprefix("ERROR: "))
