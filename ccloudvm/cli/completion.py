"""Shell completion: the script for bash, zsh or fish, and the names an argument takes.

Click's own machinery does the work (`_CCLOUDVM_COMPLETE=bash_source ccloudvm` is what
`ccloudvm completion bash` prints); the callbacks here add instance, workload and image
names. They run at every Tab, so they read names from the state directory only (no QEMU
asked, no file parsed that need not be), import what they need when called, and never
fail: a missing or broken state directory gives no names, not a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click
    from click.shell_completion import CompletionItem

    from ccloudvm.state.paths import StateDir

SHELLS = ("bash", "zsh", "fish")
PROG = "ccloudvm"
COMPLETE_VAR = "_CCLOUDVM_COMPLETE"


def script(command: click.Command, shell: str) -> str:
    """The completion script for `shell`, as click's `{shell}_source` would print it."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"no completion for {shell!r}; use one of {', '.join(SHELLS)}")
    return cls(command, {}, PROG, COMPLETE_VAR).source()


def completable(name: str) -> bool:
    """A name a shell can be offered: printable, no blanks, and not starting with '-'.

    Anything else (a folder named with a newline, say) is left out: it could not be
    typed back, and a newline or ':' would break the shells' completion protocols."""
    return (
        bool(name)
        and name.isprintable()
        and not any(c.isspace() for c in name)
        and (":" not in name and not name.startswith("-"))
    )


def _items(names: Iterable[str], incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    chosen = sorted({n for n in names if n.startswith(incomplete) and completable(n)})
    return [CompletionItem(n) for n in chosen]


def _state() -> StateDir:
    from ccloudvm.state.paths import StateDir

    return StateDir.from_env()


def instance_names(state: StateDir) -> list[str]:
    from ccloudvm.state.instance_state import NAME_PATTERN, creating_names
    from ccloudvm.state.instance_state import instance_names as names

    return [n for n in {*names(state), *creating_names(state)} if NAME_PATTERN.fullmatch(n)]


def workload_names(state: StateDir) -> list[str]:
    from ccloudvm.workloads.definition import NAME_RE, list_workloads

    return [name for name, _, _ in list_workloads(state) if NAME_RE.fullmatch(name)]


def image_names(state: StateDir) -> list[str]:
    from ccloudvm.images import catalog as images

    return [d.name for d in images.list_definitions(state)] + [
        i.name for i in images.cached_images(state)
    ]


def _completer(
    find: Callable[[StateDir], Iterable[str]], *, paths: bool = False
) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    def complete(
        ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        if paths and (incomplete.startswith((".", "~")) or "/" in incomplete):
            return [CompletionItem(incomplete, type="file")]
        try:
            return _items(find(_state()), incomplete)
        except Exception:  # a Tab must never print a traceback, whatever the state dir holds
            return []

    return complete


complete_instances = _completer(instance_names)
complete_workloads = _completer(workload_names, paths=True)  # a workload may be a file
complete_images = _completer(image_names)
