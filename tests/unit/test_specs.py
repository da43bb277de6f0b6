"""--port specs: [ADDR:]HOST:GUEST on loopback only, as stored and as shown."""

from __future__ import annotations

import pytest

from ccloudvm.core.errors import UsageError
from ccloudvm.core.specs import PortSpec


@pytest.mark.parametrize(
    ("text", "bind", "endpoint"),
    [
        ("80", "127.0.0.1", "127.0.0.1:80 -> 80"),
        ("18480:8000", "127.0.0.1", "127.0.0.1:18480 -> 8000"),
        ("localhost:18480:8000", "127.0.0.1", "127.0.0.1:18480 -> 8000"),
        ("127.77.0.9:2222:22", "127.77.0.9", "127.77.0.9:2222 -> 22"),
    ],
)
def test_parse_bind_address_and_endpoint(text: str, bind: str, endpoint: str) -> None:
    spec = PortSpec.parse(text)
    assert spec.bind_address == bind
    assert spec.endpoint() == endpoint
    assert PortSpec.parse(str(spec)) == spec  # what the state file keeps reads back the same


@pytest.mark.parametrize("text", ["0.0.0.0:80:80", "10.0.0.1:80:80", "host:80:80", "::1:80:80"])
def test_only_loopback_addresses_are_accepted(text: str) -> None:
    with pytest.raises(UsageError):
        PortSpec.parse(text)
