"""Fixtures shared by the unit tests of workloads and templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccloudvm.core.hostinfo import HostUser
from ccloudvm.guest.proxy import ProxySettings
from ccloudvm.workloads.templating import TemplateContext


@pytest.fixture
def host(tmp_path: Path) -> HostUser:
    return HostUser(
        name="alice",
        uid=1234,
        gid=1234,
        group="alice",
        home=tmp_path / "home",
        gopath=tmp_path / "home" / "go",
        git_name="Alice Example",
        git_email="alice@example.org",
    )


@pytest.fixture
def ctx(host: HostUser) -> TemplateContext:
    return TemplateContext(host=host, instance_name="vm1", proxies=ProxySettings())
