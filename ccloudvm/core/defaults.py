"""An instance's default sizes, limits and timeouts: plain constants, so the command line
can show them in --help without importing the machinery that uses them."""

from __future__ import annotations

DEFAULT_DISK_GIB = 20
MIN_MEM_MIB = 256
MAX_DISK_GIB = 4096
BOOT_TIMEOUT = 900.0  # software emulation on a busy 2-core host is slow
STOP_TIMEOUT = 120.0
