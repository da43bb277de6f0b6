"""The JSON Schemas of workload files and image definitions: derived from the models,
committed, current, and the bundled files pass a third-party validator (check-jsonschema)
against them; a bad file gets every problem at once, one line each with its file, line
and field path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ccloudvm.core.config import ConfigError
from ccloudvm.images import catalog as images
from ccloudvm.images import model as image_model
from ccloudvm.state.paths import StateDir
from ccloudvm.workloads.definition import load_workload
from ccloudvm.workloads.model import WorkloadFile
from ccloudvm.workloads.templating import TemplateContext

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "docs" / "workload.schema.json"
IMAGE_SCHEMA = ROOT / "docs" / "image.schema.json"
WORKLOADS = sorted(
    [*(ROOT / "templates").glob("*.yaml"), *(ROOT / "tests/workloads").glob("*.yaml")]
)


def _check_jsonschema(*files: Path, schema: Path = SCHEMA) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(  # noqa: S603 - fixed argv
        [str(tool), "--schemafile", str(schema), *map(str, files)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_committed_schema_is_what_the_command_prints(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603 - the tool under test, fixed argv
        [sys.executable, "-m", "ccloudvm", "workload", "schema"],
        env={**os.environ, "CCLOUDVM_HOME": str(tmp_path)},
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.stdout == SCHEMA.read_text(), (
        "docs/workload.schema.json is stale: ccloudvm workload schema > docs/workload.schema.json"
    )


def test_bundled_workloads_pass_check_jsonschema() -> None:
    assert len(WORKLOADS) >= 5
    result = _check_jsonschema(*WORKLOADS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "text",
    [
        "image: x\nprovison: []\n",
        "image: x\nvm: {cpus: two}\n",
        "image: x\nprovision: [{run: ls}]\n",
        "image: x\nvm: {mounts: [{host: /a, guest: /b, security_model: maybe}]}\n",
    ],
)
def test_check_jsonschema_refuses_what_the_model_refuses(
    text: str, tmp_path: Path, state: StateDir, ctx: TemplateContext
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert _check_jsonschema(bad).returncode != 0
    with pytest.raises(ConfigError):
        load_workload(state, str(bad), ctx)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.ensure()
    return s


def test_every_problem_of_a_file_at_once(
    tmp_path: Path, state: StateDir, ctx: TemplateContext
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "image: x\n"
        "vm:\n"
        "  cpus: two\n"
        "  mems: 1G\n"
        "provision:\n"
        "  - {run: ls}\n"
        "  - {name: b, run: ls, only: sometimes, env: {1x: y}}\n"
        "checks: [{name: c}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_workload(state, str(bad), ctx)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{bad} line 3: vm.cpus must be an integer, not 'two'",
        f"{bad} line 4: vm.mems: unknown field 'mems' (did you mean 'mem'?)",
        f"{bad} line 6: provision[0]: field 'name' is missing",
        f"{bad} line 7: provision[1].env.1x: bad variable name '1x' (use letters, digits and _)",
        f"{bad} line 7: provision[1].only must be vm or host",
        f"{bad} line 8: checks[0]: a check needs exactly one of run, script",
    ]
    assert info.value.exit_code == 2


def test_one_problem_keeps_its_hint_apart(
    tmp_path: Path, state: StateDir, ctx: TemplateContext
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("image: x\ncluster:\n  network: {bridg: br1}\n")
    with pytest.raises(ConfigError) as info:
        load_workload(state, str(bad), ctx)
    assert info.value.message == f"{bad} line 3: cluster.network.bridg: unknown field 'bridg'"
    assert info.value.hint == "did you mean 'bridge'?"


def test_committed_image_schema_is_current() -> None:
    assert image_model.json_schema() == IMAGE_SCHEMA.read_text(), (
        "docs/image.schema.json is stale: regenerate it from ccloudvm.images.model.json_schema()"
    )


def test_bundled_image_definitions_pass_check_jsonschema() -> None:
    definitions = sorted((ROOT / "images").glob("*.yaml"))
    assert len(definitions) >= 2
    result = _check_jsonschema(*definitions, schema=IMAGE_SCHEMA)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_problem_of_an_image_definition_at_once(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.user_images.mkdir(parents=True)
    bad = state.user_images / "bad.yaml"
    bad.write_text(
        "source:\n  disk: ftp://x/y.img\n  sha256: {disk: nothex}\n"
        "build:\n  suite: bookworm\n  packages: [bash]\n  colour: red\nboot: {warm: maybe}\n"
    )
    assert _check_jsonschema(bad, schema=IMAGE_SCHEMA).returncode != 0
    with pytest.raises(ConfigError) as info:
        images.load_definition(state, "bad")
    where = f"image definition {bad}"
    assert str(info.value).splitlines() == [
        f"{where} line 2: source.disk: 'ftp://x/y.img' is not an http(s) URL",
        f"{where} line 3: source.sha256.disk must be 64 hex digits (a sha256)",
        f"{where} line 7: build.colour: unknown key 'colour' (known: suite, packages, "
        "mirror, initrd_modules, size_gib, files, services, masked)",
        f"{where} line 8: boot.warm must be true or false, not 'maybe'",
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("1: x\nimage: x\n", "line 1: 1: the key 1 must be a string"),
        ("image: x\nvars: {1: a}\n", "line 2: vars.1: the key 1 must be a string"),
        ("image: 2024-01-01\n", "line 1: image must be a string, not datetime.date(2024, 1, 1)"),
        (
            "image: x\nuser_data: [a]\n",
            "line 2: user_data must be a string or a mapping, not ['a']",
        ),
        ("image: x\nvm: {disk: 0}\n", "line 2: vm.disk must be positive"),
    ],
)
def test_keys_and_values_yaml_reads_as_other_types(
    text: str, line: str, tmp_path: Path, state: StateDir, ctx: TemplateContext
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_workload(state, str(bad), ctx)
    assert info.value.message == f"{bad} {line}"


def test_the_example_in_the_docs_is_a_valid_workload_file() -> None:
    text = (ROOT / "docs" / "workloads.md").read_text()
    example = text[text.index("## The file") :].split("```yaml\n", 1)[1].split("```", 1)[0]
    WorkloadFile.model_validate(yaml.safe_load(example))
