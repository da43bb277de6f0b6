"""The record-before-change journal: what a cluster changed on a machine, so it can be undone.

One change per line, its kind first, written (and synced) BEFORE the change is made, so
an undo from the journal is complete even after a crash half-way: an entry whose change
never happened is simply skipped. The cluster shell scripts write the same format
(templates/cluster/_common.sh.j2); this module is the Python side, used for the
bare-metal namespace and as a fallback when a cleanup script cannot run.

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
import os
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

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
                _undo(parse_line(line), run)
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


def _must(run: Runner, argv: Sequence[str]) -> str:
    status, output = run(argv)
    if status != 0:
        tail = output.strip().splitlines()[-1:] or [f"exit status {status}"]
        raise JournalError(f"{' '.join(argv)}: {tail[0]}")
    return output


def _swap_op(args: Sequence[str], op: str) -> list[str]:
    return [op if word in ("-A", "-I") else word for word in args]


def kill_netns_processes(run: Runner, name: str) -> None:
    """Stop whatever still runs in network namespace `name`: TERM, then KILL."""
    for signal in ("-TERM", "-KILL"):
        status, output = run(["ip", "netns", "pids", name])
        pids = output.split() if status == 0 else []
        if not pids:
            return
        run(["kill", signal, *pids])
        time.sleep(0.3)


def _undo(words: list[str], run: Runner) -> None:  # noqa: C901
    kind, args = words[0], words[1:]
    if kind == "link":
        if run(["ip", "link", "show", "dev", args[0]])[0] == 0:
            _must(run, ["ip", "link", "del", args[0]])
    elif kind == "netns":
        if Path("/run/netns", args[0]).exists():
            kill_netns_processes(run, args[0])
            _must(run, ["ip", "netns", "del", args[0]])
    elif kind == "sysctl":
        _must(run, ["sysctl", "-q", "-w", f"{args[0]}={args[1]}"])
    elif kind == "iptables":
        if run(["iptables", "-w", *_swap_op(args, "-C")])[0] == 0:
            _must(run, ["iptables", "-w", *_swap_op(args, "-D")])
    elif kind == "iptables-table":
        _drop_empty_table(run, args[0])
    elif kind == "pidfile":
        _stop_pidfile(run, args[0], Path(args[1]))
    elif kind == "file":
        _must(run, ["rm", "-f", "--", args[0]])
    elif kind == "backup":
        if Path(args[1]).exists() or Path(args[1]).is_symlink():
            _must(run, ["rm", "-f", "--", args[0]])
            _must(run, ["cp", "-a", "--", args[1], args[0]])
            _must(run, ["rm", "-f", "--", args[1]])
    elif kind == "dir":
        if args[0] in ("/", ""):
            raise JournalError(f"refusing to remove directory {args[0]!r}")
        _must(run, ["rm", "-rf", "--", args[0]])
    elif kind == "exec":
        run(args)
    elif kind == "docker" and run(["docker", "inspect", args[0]])[0] == 0:
        _must(run, ["docker", "rm", "-f", args[0]])


def _drop_empty_table(run: Runner, table: str) -> None:
    status, version = run(["iptables", "-V"])
    if status != 0 or "nf_tables" not in version:
        return  # legacy iptables: tables are the kernel's, nothing was made
    if run(["nft", "list", "table", "ip", table])[0] != 0:
        return
    status, rules = run(["iptables", "-w", "-t", table, "-S"])
    lines = rules.split("\n") if status == 0 else ["unknown"]
    if all(re.fullmatch(r"-P [A-Z]+ ACCEPT", line) for line in lines if line.strip()):
        _must(run, ["nft", "delete", "table", "ip", table])


def _stop_pidfile(run: Runner, comm: str, path: Path) -> None:
    pid = _read_pid(path)
    if pid is not None and _comm(pid) == comm:
        run(["kill", str(pid)])
        for _ in range(25):
            if _comm(pid) is None:
                break
            time.sleep(0.2)
        else:
            run(["kill", "-KILL", str(pid)])
    _must(run, ["rm", "-f", "--", str(path)])


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _comm(pid: int) -> str | None:
    """The name of running process `pid`; None if gone or a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2][:1]
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return None if state == "Z" else name
