"""Sizes: 512M, 4G, 4GiB, 1.5G and plain numbers, on the command line and in workloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.core.sizes import SizeError, accepted_forms, parse_size
from ccloudvm.state.paths import StateDir
from ccloudvm.workloads.definition import load_workload
from ccloudvm.workloads.templating import TemplateContext
from tests.unit.test_cli_errors import _one_line_error, ccloudvm


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        ("512M", "M", 512), ("512m", "M", 512), ("512MiB", "M", 512), ("512MB", "M", 512),
        ("4G", "M", 4096), ("4GiB", "M", 4096), ("4gb", "M", 4096), ("4 G", "M", 4096),
        ("1.5G", "M", 1536), ("0.5G", "M", 512), ("2048", "M", 2048), (" 1024 ", "M", 1024),
        ("1048576K", "M", 1024), ("1T", "M", 1024**2), ("1.5", "M", 2),
        ("20", "G", 20), ("20G", "G", 20), ("20GiB", "G", 20), ("1T", "G", 1024),
        ("1.5G", "G", 2), ("512M", "G", 1), ("2049M", "G", 3), ("1.25T", "G", 1280),
        ("0", "M", 0), ("0G", "G", 0),
    ],
)  # fmt: skip
def test_parse_size(text: str, unit: str, expected: int) -> None:
    assert parse_size(text, unit) == expected


def test_a_plain_integer_is_in_the_unit() -> None:
    assert parse_size(2048, "M") == 2048
    assert parse_size(20, "G") == 20


@pytest.mark.parametrize(
    "text",
    ["", "G", "4X", "4GG", "-1G", "1,5G", "4 GiB of RAM", "1e3", "4iB", ".5G", "1.G", "0x10"],
)
def test_not_a_size_says_the_accepted_forms(text: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_size(text, "M")
    assert repr(text) in str(info.value)
    assert "512M, 4G, 4GiB or 1.5G" in str(info.value) and "plain number of MiB" in str(info.value)


@pytest.mark.parametrize("value", [True, 1.5, None, -1])
def test_other_values_are_refused(value: object) -> None:
    with pytest.raises(SizeError):
        parse_size(value, "G")  # type: ignore[arg-type]


def test_accepted_forms_name_the_unit() -> None:
    assert accepted_forms("G").endswith("plain number of GiB")
    with pytest.raises(ValueError):
        parse_size("1G", "K")


# ------------------------------------------------------------------ the command line


@pytest.mark.parametrize(
    ("flag", "value", "unit"),
    [("--mem", "4X", "MiB"), ("--disk", "lots", "GiB"), ("--mem", "", "MiB")],
)
def test_cli_refuses_a_bad_size_naming_the_forms(flag: str, value: str, unit: str) -> None:
    result = ccloudvm("create", "debian", "--name", "x", flag, value)
    _one_line_error(result, 2, f"Invalid value for '{flag}'", "512M, 4G, 4GiB or 1.5G",
                    f"plain number of {unit}")  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [("--mem", "8M", "--mem 8 MiB is out of range"), ("--mem", "0.1G", "--mem 103 MiB is out"),
     ("--disk", "0G", "--disk 0 GiB is out of range")],
)  # fmt: skip
def test_cli_sizes_reach_the_range_checks_converted(flag: str, value: str, needle: str) -> None:
    # The size is parsed into MiB/GiB before the range checks see it.
    result = ccloudvm("create", "debian", "--name", "x", flag, value)
    _one_line_error(result, 2, needle)


def test_create_help_lists_the_forms() -> None:
    out = ccloudvm("create", "--help").stdout
    assert "--mem SIZE" in out and "--disk SIZE" in out and "4GiB" in out


# ------------------------------------------------------------------ workloads


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    s = StateDir(tmp_path / "state")
    s.ensure()
    s.user_workloads.mkdir()
    return s


# ctx: the shared fixture of tests/unit/conftest.py


@pytest.mark.parametrize(
    ("vm", "mem", "disk"),
    [("{mem: 4G, disk: 20G}", 4096, 20), ("{mem: 1.5G, disk: 1.5G}", 1536, 2),
     ("{mem: 512MiB, disk: 1T}", 512, 1024), ("{mem: 2048, disk: 30}", 2048, 30)],
)  # fmt: skip
def test_workload_sizes(
    state: StateDir, ctx: TemplateContext, vm: str, mem: int, disk: int
) -> None:
    (state.user_workloads / "w.yaml").write_text(f"image: debian-12\nvm: {vm}\n")
    w = load_workload(state, "w", ctx)
    assert (w.vm.mem_mib, w.vm.disk_gib) == (mem, disk)


@pytest.mark.parametrize(
    ("vm", "message"),
    [("{mem: 4X}", "vm.mem must be a number or a size like 4G, not '4X'"),
     ("{disk: 0G}", "vm.disk must be positive"), ("{mem: 0}", "vm.mem must be positive")],
)  # fmt: skip
def test_workload_bad_sizes(state: StateDir, ctx: TemplateContext, vm: str, message: str) -> None:
    (state.user_workloads / "w.yaml").write_text(f"image: debian-12\nvm: {vm}\n")
    with pytest.raises(UsageError) as info:
        load_workload(state, "w", ctx)
    assert message in str(info.value)
    if "4X" in message:
        assert "512M, 4G, 4GiB or 1.5G" in str(info.value)
