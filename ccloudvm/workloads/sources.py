"""Finding workload files: a path, a URL, or a name in the user's folder or templates/."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import yaml

from ccloudvm.core.errors import NotFoundError, UsageError
from ccloudvm.state.paths import StateDir, resource_dir
from ccloudvm.workloads.downloads import refuse_private_url

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_REMOTE_BYTES = 1 << 20
MAX_REDIRECTS = 10


@dataclass(frozen=True)
class WorkloadSource:
    name: str
    origin: str  # absolute path or URL
    text: str
    base_dir: Path | None  # folder for relative file references; None for URLs

    @property
    def remote(self) -> bool:
        return self.base_dir is None


def _bundled_dir() -> Path:
    return resource_dir("templates")


def _is_url(ref: str) -> bool:
    return re.match(r"https?://", ref) is not None


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.startswith((".", "~")) or ref.endswith((".yaml", ".yml"))


def _read_path(path: Path) -> WorkloadSource:
    path = path.expanduser().absolute()
    if not path.is_file():
        raise NotFoundError(f"workload file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read workload file {path}: {exc}") from exc
    return WorkloadSource(name=path.stem, origin=str(path), text=text, base_dir=path.parent)


def _fetch_url(url: str, child: WorkloadSource | None = None) -> WorkloadSource:
    """Fetch a workload; for the parent of a workload from a URL (`child`), every address,
    redirects included, must be the child's own server or a public one."""
    import requests  # only needed for URL workloads

    try:
        # requests takes the host's proxies from the environment.
        location = url
        for _hop in range(MAX_REDIRECTS + 1):
            if child is not None:
                _refuse_private_parent(location, child)
            response = requests.get(location, timeout=30, stream=True, allow_redirects=False)
            if not response.is_redirect:
                break
            location = urljoin(location, response.headers["location"])
            response.close()
        else:
            raise requests.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")
        response.raise_for_status()
        body = response.raw.read(MAX_REMOTE_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise UsageError(
            f"cannot fetch workload {url}: {exc}",
            hint="check the URL, and http_proxy/https_proxy if you are behind a proxy",
        ) from exc
    if len(body) > MAX_REMOTE_BYTES:
        raise UsageError(f"workload {url} is larger than 1 MiB; is it really a workload file?")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"workload {url} is not UTF-8 text") from exc
    stem = Path(urlsplit(url).path).stem or "workload"
    return WorkloadSource(name=stem, origin=url, text=text, base_dir=None)


def _refuse_private_parent(url: str, child: WorkloadSource) -> None:
    """A workload from a URL inherits from its own server or a public one: it never makes
    the host fetch from another of the host's own services or its private networks."""
    here, there = urlsplit(child.origin), urlsplit(url)
    if (here.scheme, here.netloc.lower()) != (there.scheme, there.netloc.lower()):
        refuse_private_url(url, child.origin, action=f"inherits: {url}")


def _name_folders(state: StateDir) -> tuple[Path, Path]:
    """Where names are looked up, in order: the user's own workloads override bundled ones
    of the same name (as the user's images do)."""
    return (state.user_workloads, _bundled_dir())


def _named_candidates(state: StateDir) -> list[tuple[str, Path]]:
    """(name, path) of every workload found by name, in lookup order."""
    found: list[tuple[str, Path]] = []
    for folder in _name_folders(state):
        if folder.is_dir():
            found.extend((p.stem, p) for p in sorted(folder.glob("*.yaml")))
    return found


def find_workload(state: StateDir, ref: str, *, skip: str | None = None) -> WorkloadSource:
    """A URL or a path as given; else a name in <state>/workloads/, then templates/.

    `skip` is the origin of a file looking for its parent: your own debian.yaml that says
    `inherits: debian` extends the bundled debian instead of inheriting itself.
    """
    if _is_url(ref):
        return _fetch_url(ref)
    if _is_path(ref):
        return _read_path(Path(ref))
    if not NAME_RE.fullmatch(ref):
        raise UsageError(f"invalid workload name {ref!r}", hint="use letters, digits, . _ -")
    paths = [folder / f"{ref}.yaml" for folder in _name_folders(state)]
    found = [path for path in paths if path.is_file()]
    for path in found:
        if str(path.absolute()) != skip:
            return _read_path(path)
    if found:  # only the file itself: let the cycle check name it
        return _read_path(found[0])
    names = sorted({name for name, _ in _named_candidates(state)})
    close = difflib.get_close_matches(ref, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise NotFoundError(
        f"no workload named {ref!r}",
        hint=hint + "run 'ccloudvm workloads' to list them, or give a path or URL",
    )


def _find_parent(state: StateDir, child: WorkloadSource, ref: str) -> WorkloadSource:
    """Names resolve as usual; relative paths resolve against the child's folder or URL."""
    remote_child = child if child.remote else None
    if _is_url(ref):
        return _fetch_url(ref, remote_child)
    if _is_path(ref):
        if child.base_dir is None:
            return _fetch_url(urljoin(child.origin, ref), remote_child)
        path = Path(ref).expanduser()
        return _read_path(path if path.is_absolute() else child.base_dir / path)
    return find_workload(state, ref, skip=child.origin)


def list_workloads(state: StateDir) -> list[tuple[str, str, str]]:
    """(name, description, origin) of every workload found by name, in lookup order."""
    rows = []
    seen: set[str] = set()
    for name, path in _named_candidates(state):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            description = str(data.get("description", "")) if isinstance(data, dict) else ""
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            description = "(unreadable: run 'ccloudvm workload show' for the error)"
        if name in seen:
            description = f"(overridden by your {state.user_workloads / name}.yaml) {description}"
        seen.add(name)
        rows.append((name, description, str(path)))
    return rows
