from __future__ import annotations

import time
from pathlib import Path

import pytest

from ccloudvm.guest.seed import READY_MARKER
from ccloudvm.vm import ready


def test_stage_is_read_from_the_console() -> None:
    log = (
        "[    1.0] Run /init as init process\n"
        "         Starting \x1b[0;1;39mcloud-init-local.service\x1b[0m - Initial cloud-init job...\n"
        "[   20.1] cloud-init[368]: Cloud-init v. 22.4.2 running 'modules:config' at Tue\n"
    )
    assert ready.current_stage(log) == "modules:config"
    assert (
        ready.current_stage(
            "         Starting \x1b[0;1;39mssh.service\x1b[0m - OpenBSD Secure Shell server...\n"
        )
        == "ssh.service"
    )


def test_marker_ends_the_wait_and_stages_are_reported_on_the_way(tmp_path: Path) -> None:
    # The guest writes its console a line at a time; each check of the QEMU process
    # (is_alive) lets the fake guest print its next line.
    log = tmp_path / "serial.log"
    log.write_text("booting\n")
    console = [
        "         Starting cloud-init-local.service - Initial cloud-init job...\n",
        "[ 20.1] cloud-init[368]: Cloud-init v. 22.4.2 running 'modules:config' at Tue\n",
        f"[ 30.4] cloud-init[421]: {READY_MARKER} 30.45\n",
        "this line is never printed: the wait is over\n",
    ]
    stages: list[str] = []

    def alive() -> bool:
        with log.open("a") as out:
            out.write(console.pop(0))
        return True

    ready.wait_for_marker(
        log, deadline=time.monotonic() + 60, is_alive=alive, on_stage=stages.append, name="dev"
    )
    assert stages == ["cloud-init-local.service", "modules:config"]
    assert console == ["this line is never printed: the wait is over\n"]


def test_dead_qemu_fails_with_the_console_tail(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    with pytest.raises(ready.BootFailed, match="exited while the guest was booting") as info:
        ready.wait_for_marker(
            log,
            deadline=time.monotonic() + 5,
            is_alive=lambda: False,
            on_stage=lambda s: None,
            name="dev",
        )
    assert "Kernel panic" in str(info.value)


def test_timeout_names_the_instance_and_what_to_do(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("still booting\n")
    with pytest.raises(ready.BootFailed, match="was not ready in time") as info:
        ready.wait_for_marker(
            log,
            deadline=time.monotonic() + 0.3,
            is_alive=lambda: True,
            on_stage=lambda s: None,
            name="dev",
        )
    assert info.value.hint and "ccloudvm delete dev" in info.value.hint


def test_cloud_init_errors_are_read_from_result_json() -> None:
    assert ready.cloud_init_errors('{"v1": {"datasource": "x", "errors": ["boom"]}}') == ["boom"]
    assert ready.cloud_init_errors('{"v1": {"errors": []}}') == []
    assert ready.cloud_init_errors("garbage") == []


def test_stage_names_carry_no_colour_codes_even_when_a_read_cut_one() -> None:
    # systemd colours unit names; a console read may start inside an escape sequence.
    log = (
        "0;1;39m[0m Starting \x1b[0;1;39mmodprobe@dm_mod.service\x1b[0m - Load Kernel Module...\n"
        "[  OK  ] Reached target \x1b[0;1;39mlocal-fs.target\x1b[0m[0m\n"
    )
    assert ready.current_stage(log) == "local-fs.target"
    assert ready.current_stage(log.splitlines()[0]) == "modprobe@dm_mod.service"
    assert ready.current_stage("Starting \x1b[1mx\x1b[K.service...") == "x.service"


def test_the_result_printed_on_the_console_is_found(tmp_path: Path) -> None:
    from ccloudvm.vm.ready import console_result

    log = tmp_path / "serial.log"
    log.write_text("boot\n[  58.3] python3[424]: CCLOUDVM-READY 58.34\n")
    assert console_result(log) is None  # an image that does not print it: asked over SSH
    errors = '{"v1":{"errors":["(\'scripts-user\', RuntimeError(\'runcmd failed\'))"]}}'
    log.write_text(f"boot\n\x1b[0mCCLOUDVM-RESULT {errors}\n")
    result = console_result(log)
    assert result is not None and ready.cloud_init_errors(result) == [
        "('scripts-user', RuntimeError('runcmd failed'))"
    ]
    assert console_result(tmp_path / "missing.log") is None
