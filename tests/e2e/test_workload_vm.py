"""A workload on a real VM, behind a real HTTP proxy on the host's loopback.

One boot covers: a cloud-config part, provision steps (two of the base workload's, then apt
and curl that must go through the proxy), the proxy settings ccloudvm wrote into the guest
(the loopback proxy rewritten to the user-network gateway), `verify` passing and failing,
`provision` running the steps again, and `workload show` printing what will run.
The proxy's own log is the evidence that the guest's apt and curl used it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ccloudvm.app import workflow
from ccloudvm.state.paths import StateDir
from tests.e2e.conftest import CLI
from tests.support.proxy import ProxyServer, run_proxy

pytestmark = pytest.mark.e2e

NAME = "e2e-work"
WORKLOAD = Path(__file__).resolve().parents[1] / "workloads" / "e2e-proxy.yaml"
STEPS = [
    "Write a file as the user",
    "Use an environment variable",
    "Install curl with apt",
    "Fetch a file with curl as the user",
]
FAIL_MARKER = "/var/lib/ccloudvm-e2e/make-verify-fail"


@pytest.fixture
def proxy() -> Iterator[ProxyServer]:
    with run_proxy() as server:
        yield server


def _proxy_env(proxy: ProxyServer) -> dict[str, str]:
    # The host's own downloads (the image, from the test's server on 127.0.0.1) go direct.
    return {
        "http_proxy": proxy.url,
        "https_proxy": proxy.url,
        "no_proxy": "127.0.0.1,localhost",
        "HTTP_PROXY": "",
        "HTTPS_PROXY": "",
        "NO_PROXY": "",
    }


def _assert_steps_ok(text: str) -> None:
    for step in STEPS:
        assert re.search(rf"^{re.escape(step)} \.\.\. OK \(", text, re.M), (
            f"step {step!r} not shown as OK:\n{text}"
        )


def _self_signed_ca(path: Path) -> str:
    """A CA certificate like a TLS-intercepting proxy's; returns a line of its base64 body."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ccloudvm e2e proxy CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    path.write_text(pem)
    return pem.splitlines()[1]


def test_workload_behind_a_proxy(cli: CLI, proxy: ProxyServer, tmp_path: Path) -> None:
    env = _proxy_env(proxy)
    ca_line = _self_signed_ca(tmp_path / "proxy-ca.pem")
    guest_proxy = f"http://10.0.2.2:{proxy.port}"

    # workload show: the merged, rendered result, no VM needed
    shown = cli("workload", "show", str(WORKLOAD), "--name", NAME, env=env).out
    assert "apt-get install -y curl" in shown
    assert 'echo "step one ran as $(id -un)"' in shown  # the parent's steps come first
    assert shown.index("Write a file as the user") < shown.index("Install curl with apt")
    assert f"written by cloud-init for {NAME}" in shown
    assert f'Acquire::http::Proxy "{guest_proxy}";' in shown
    assert proxy.requests == []

    start = time.monotonic()
    created = cli("create", str(WORKLOAD), "--name", NAME, "--mem", "1024",
                  "--ca-cert", str(tmp_path / "proxy-ca.pem"), env=env)  # fmt: skip
    create_seconds = time.monotonic() - start
    _assert_steps_ok(created.err)
    step_seconds = [float(s) for s in re.findall(r" \.\.\. OK \(([\d.]+) s\)", created.err)]
    print(f"\ncreate took {create_seconds:.1f} s; provision steps {step_seconds}")
    print(created.err)

    # --ca-cert: the proxy's CA is in the guest's trust store
    bundle = cli("run", NAME, "--", "cat", "/etc/ssl/certs/ca-certificates.crt").out
    assert ca_line in bundle, "the extra CA certificate is not in the guest's trust store"

    # The proxy's own log: apt's and curl's requests, from the guest (through QEMU's NAT,
    # so from the host's loopback), to Debian's archive only.
    seen = proxy.requests
    apt = [r for r in seen if r.user_agent.startswith("Debian APT")]
    curl = [r for r in seen if r.user_agent.startswith("curl/")]
    assert apt and all(r.host == "deb.debian.org" or r.host == "security.debian.org" for r in apt)
    assert any("/dists/bookworm/" in r.target for r in apt), [r.target for r in apt]
    assert any(r.target.endswith(".deb") and "/curl_" in r.target for r in apt), [
        r.target for r in apt
    ]
    assert [(r.method, r.target, r.status) for r in curl] == [
        ("GET", "http://deb.debian.org/debian/dists/bookworm/Release", 200)
    ]
    assert [r for r in seen if r.status == 403] == [], "the guest asked for a host outside Debian"

    # create and status say what proxy propagation wrote
    assert f"proxy: http_proxy={guest_proxy} https_proxy={guest_proxy}" in created.err
    said = json.loads(cli("status", NAME, "--json").out)["proxy"]
    assert said.startswith(f"http_proxy={guest_proxy}") and "/etc/environment" in said

    # What ccloudvm wrote into the guest: the gateway, not the host's loopback.
    environment = cli("run", NAME, "--", "cat", "/etc/environment").out
    assert f"http_proxy={guest_proxy}" in environment
    assert f"https_proxy={guest_proxy}" in environment
    assert "127.0.0.1:" not in environment
    no_proxy = re.search(r"^no_proxy=(.*)$", environment, re.M)
    assert no_proxy, environment
    entries = no_proxy.group(1).split(",")
    for entry in ("10.0.2.2", "127.0.0.1", "localhost", NAME, "10.0.2.15"):
        assert entry in entries, f"{entry} missing from no_proxy={no_proxy.group(1)}"
    assert len(entries) == len(set(entries)), "no_proxy has duplicates"
    apt_conf = cli("run", NAME, "--", "sh", "-c", "cat /etc/apt/apt.conf.d/*proxy*").out
    assert f'Acquire::http::Proxy "{guest_proxy}";' in apt_conf

    # The cloud-config part and both base steps left their files.
    marker = cli("run", NAME, "--", "cat", "/var/lib/ccloudvm-e2e/cloud-config-marker").out
    assert marker.strip() == f"written by cloud-init for {NAME}"
    user = cli("run", NAME, "--", "id", "-un").out.strip()
    assert cli("run", NAME, "--", "cat", "e2e-step1").out.strip() == f"step one ran as {user}"
    step2 = cli("run", NAME, "--", "cat", "/var/lib/ccloudvm-e2e/step2").out
    assert step2.strip() == f"hello from {NAME}"
    assert "Codename: bookworm" in cli("run", NAME, "--", "cat", "e2e-release").out

    # verify: every check passes; then one fails and verify says so with its exit status.
    verified = cli("verify", NAME)
    assert "3 passed, 0 failed" in verified.out
    cli("run", NAME, "--", "sudo", "touch", FAIL_MARKER)
    failing = cli("verify", NAME, check=False)
    assert failing.code == 1, failing
    assert "2 passed, 1 failed" in failing.out
    assert re.search(r"^no failure was requested \.\.\. FAIL", failing.err, re.M), failing.err
    cli("run", NAME, "--", "sudo", "rm", FAIL_MARKER)

    # provision: the same steps again, through the proxy again.
    before = len(proxy.requests)
    start = time.monotonic()
    again = cli("provision", NAME, env=env)
    print(f"provision again took {time.monotonic() - start:.1f} s")
    _assert_steps_ok(again.err)
    later = proxy.requests[before:]
    assert any(r.user_agent.startswith("Debian APT") for r in later)
    assert any(r.user_agent.startswith("curl/") for r in later)
    assert "3 passed, 0 failed" in cli("verify", NAME).out

    cli("delete", NAME)
    assert cli.instances() == []


@pytest.mark.parametrize("propagate", [True, False])
def test_no_proxy_propagation_in_the_create_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, propagate: bool
) -> None:
    """What `create --no-proxy-propagation` hands to the instance: no proxy anywhere in
    the guest's cloud-config (no VM needed; the flag maps to CreateOptions.propagate_proxy)."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:3128")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
    state = StateDir(tmp_path / "state")
    state.ensure()
    options = workflow.CreateOptions(name=NAME, propagate_proxy=propagate)
    request, _ = workflow.build_request(state, str(WORKLOAD), options)
    text = yaml.safe_dump(request.user_data)
    assert request.propagate_proxy is propagate
    assert ("10.0.2.2:3128" in text) is propagate
    assert ("/etc/apt/apt.conf.d/90ccloudvm-proxy" in text) is propagate
    if not propagate:
        assert "proxy" not in text.lower()
    # the workload's own cloud-config part is there either way
    assert f"written by cloud-init for {NAME}" in text
