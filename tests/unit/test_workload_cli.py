"""Every bad workload input, through the real command line: `workload show` and `create`
print one line naming the file (and line) and the problem, exit with status 2, show no
traceback, and make nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpserver import serve_directory

PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def ccloudvm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["CCLOUDVM_HOME"] = str(home)
    return subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one error line; asserts exit status 2, no traceback, nothing else printed."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "state"


BAD_FILES = {
    "malformed YAML": ("image: x\nvm: {mem: 1\n", ["line 3: malformed YAML"]),
    "unknown field": (
        "image: x\nprovison: []\n",
        ["line 2: provison: unknown field 'provison'", "did you mean 'provision'?"],
    ),
    "wrong type": ("image: x\nvm:\n  cpus: two\n", ["line 3: vm.cpus must be an integer"]),
    "bad port": (
        "image: x\nvm:\n  ports: [abc]\n",
        ["line 3: vm.ports[0]: invalid port 'abc'", "HOST:GUEST"],
    ),
    "missing parent": (
        "image: x\ninherits: debain\n",
        ["line 2: inherits: parent workload 'debain' not found", "did you mean 'debian'?"],
    ),
    "undefined variable": (
        "image: x\nprovision:\n  - {name: s, run: 'echo {{ nosuch }}'}\n",
        ["line 3: provision[0].run", "undefined template variable 'nosuch'"],
    ),
    "division by zero": (
        'image: x\nprovision:\n  - {name: s, run: "{{ 1/0 }}"}\n',
        ["line 3: provision[0].run", "ZeroDivisionError"],
    ),
    "adding a number to a string": (
        "image: x\nuser_data: 'a: {{ \"x\" + 1 }}'\n",
        ["line 2: user_data", "TypeError", "can only concatenate str"],
    ),
    "download() without a destination": (
        "image: x\nprovision:\n  - {name: s, run: '{{ download(1) }}'}\n",
        ["line 3: provision[0].run", "download() missing 1 required positional argument"],
    ),
}


@pytest.mark.parametrize("command", ["show", "create"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_workload_files(case: str, command: str, home: Path, tmp_path: Path) -> None:
    text, needles = BAD_FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    args = ["workload", "show", str(path)] if command == "show" else ["create", str(path)]
    line = one_line_error(ccloudvm(*args, home=home), *needles)
    assert str(path) in line
    assert "--port" not in line
    assert not (home / "instances").exists() or not list((home / "instances").iterdir())


@pytest.mark.parametrize("command", ["show", "create"])
def test_inheritance_cycle(command: str, home: Path, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("image: x\ninherits: [debian, ./b.yaml]\n")
    (tmp_path / "b.yaml").write_text("inherits: ./a.yaml\n")
    a = str(tmp_path / "a.yaml")
    args = ["workload", "show", a] if command == "show" else ["create", a]
    one_line_error(ccloudvm(*args, home=home), "inheritance cycle: a -> b -> a")


def test_undefined_variable_in_a_template_file_names_the_file(home: Path, tmp_path: Path) -> None:
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "s.sh.j2").write_text("echo ok\necho {{ vars.nope }}\n")
    (tmp_path / "w.yaml").write_text("image: x\nprovision: [{name: s, script: steps/s.sh.j2}]\n")
    one_line_error(
        ccloudvm("workload", "show", str(tmp_path / "w.yaml"), home=home),
        "template steps/s.sh.j2",
        "'nope'",
    )


@pytest.fixture
def www(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    with serve_directory(root) as (base_url, _server):
        yield base_url.rstrip("/")


@pytest.mark.parametrize("command", ["show", "create"])
def test_url_workload_answering_404(command: str, www: str, home: Path) -> None:
    url = f"{www}/missing.yaml"
    args = ["workload", "show", url] if command == "show" else ["create", url]
    one_line_error(ccloudvm(*args, home=home), f"cannot fetch workload {url}", "404")


def test_url_workload_on_a_closed_port(home: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.yaml"
    one_line_error(ccloudvm("workload", "show", url, home=home), f"cannot fetch workload {url}")


def test_a_good_workload_shows(home: Path) -> None:
    result = ccloudvm("workload", "show", "ciao", home=home)
    assert result.returncode == 0, result.stderr
    assert "inherits: debian -> docker -> go -> ciao" in result.stdout
