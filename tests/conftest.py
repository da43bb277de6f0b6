"""Shared test setup: every test gets its own CCLOUDVM_HOME so nothing touches ~/.ccloudvm."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCLOUDVM_HOME", str(tmp_path_factory.mktemp("ccloudvm-home")))


@pytest.fixture
def no_host_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's proxy variables out of the way: downloads go straight to 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
