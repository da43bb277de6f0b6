"""Shared test setup: every test gets its own CCLOUDVM_HOME so nothing touches ~/.ccloudvm."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCLOUDVM_HOME", str(tmp_path_factory.mktemp("ccloudvm-home")))
