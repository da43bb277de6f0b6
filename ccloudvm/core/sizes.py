"""Sizes a user types: 512M, 4G, 4GiB, 1.5G, or a plain number in the setting's own unit.

One parser for the command line (--mem, --disk) and for workloads (vm.mem, vm.disk).
Units are binary whatever the spelling (4G = 4GB = 4GiB = 4096 MiB), as QEMU, Multipass
and Lima read them. A result is a whole number of the setting's unit (MiB for memory, GiB
for disks), rounded up: --disk 1.5G is a 2 GiB disk.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

# Each unit in KiB, so that every accepted size is a whole number of KiB times a fraction.
_KIB = {"K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}
_SIZE_RE = re.compile(r"(\d+)(?:\.(\d+))?\s*(?:([KMGT])(?:i?B)?)?", re.IGNORECASE)
_UNIT_NAMES = {"M": "MiB", "G": "GiB"}


class SizeError(ValueError):
    """Not a size; the message says the accepted forms."""


def accepted_forms(unit: str) -> str:
    """The forms a size in `unit` ("M" or "G") may take, for error messages and --help."""
    return f"use a size like 512M, 4G, 4GiB or 1.5G, or a plain number of {_UNIT_NAMES[unit]}"


def parse_size(value: str | int, unit: str) -> int:
    """`value` in whole `unit`s ("M": MiB, "G": GiB), rounded up; a plain number is in `unit`.

    Zero is returned as 0 (callers say what range they take); anything that is not a
    size raises SizeError naming the accepted forms."""
    if unit not in _UNIT_NAMES:
        raise ValueError(f"unit must be M or G, not {unit!r}")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SizeError(f"{value!r} is not a size; {accepted_forms(unit)}")
    if isinstance(value, int):
        if value < 0:
            raise SizeError(f"{value} is negative; {accepted_forms(unit)}")
        return value
    match = _SIZE_RE.fullmatch(value.strip())
    if not match:
        raise SizeError(f"{value!r} is not a size; {accepted_forms(unit)}")
    whole, fraction, given = match.group(1), match.group(2) or "", (match.group(3) or unit)
    # value = digits / 10**len(fraction) units of `given`; in `unit`, rounded up.
    numerator = int(whole + fraction) * _KIB[given.upper()]
    denominator = int(10 ** len(fraction)) * _KIB[unit]
    return -(-numerator // denominator)


if TYPE_CHECKING:
    _ParamType = click.ParamType[int]  # generic from click 8.2 on
else:
    _ParamType = click.ParamType


class SizeType(_ParamType):
    """A click parameter type for a size in MiB (unit "M") or GiB (unit "G")."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.name = f"size ({_UNIT_NAMES[unit]})"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return parse_size(str(value), self.unit)
        except SizeError as exc:
            self.fail(str(exc), param, ctx)


MIB = SizeType("M")
GIB = SizeType("G")
