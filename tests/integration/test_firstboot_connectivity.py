"""connectivity step against local TLS servers: healthy, wrong certificate, closed port, CONNECT proxy,
a proxy that refuses, and a TLS-intercepting proxy (diagnosed, then fixed by installing its CA).

Test seams: ARCBAKE_ENDPOINTS_OVERRIDE (which host:port to try) and SSL_CERT_FILE (the trust store).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.firstboot_plugin import Pki
from fixtures.guestinfo import DictSource, onboarding_config
from fixtures.httpproxy import ConnectProxy
from fixtures.netutil import free_port, wait_until
from fixtures.tls import TlsServer

from firstboot.contract import OnboardingConfig
from firstboot.engine import build_context
from firstboot.step import Context, PermanentFailure, TransientFailure
from firstboot.steps import connectivity, proxy

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("trust_test_ca")]

AZURE = [
    "management.azure.com",
    "login.microsoftonline.com",
    "westeurope.dp.kubernetesconfiguration.azure.com",
]


def ctx_for(root: Path, mp: pytest.MonkeyPatch, endpoints: list[str], **proxy_cfg: Any) -> Context:
    mp.setenv("ARCBAKE_ENDPOINTS_OVERRIDE", ",".join(endpoints))
    ctx = build_context(root, DictSource(), env={})
    ctx.config = OnboardingConfig.model_validate(
        onboarding_config(proxy=proxy_cfg) if proxy_cfg else onboarding_config()
    )
    return ctx


@pytest.fixture
def routed_proxy(tls_server: TlsServer) -> Iterator[ConnectProxy]:
    server = ConnectProxy(routes={f"{name}:443": ("127.0.0.1", tls_server.port) for name in AZURE})
    yield server
    server.close()


def test_healthy_direct(guest_root: Path, monkeypatch: pytest.MonkeyPatch, tls_server: TlsServer) -> None:
    ctx = ctx_for(guest_root, monkeypatch, [f"localhost:{tls_server.port}", f"127.0.0.1:{tls_server.port}"])
    connectivity.run(ctx)
    # The server counts in its own thread, just after the client's handshake returns.
    wait_until(lambda: tls_server.handshakes >= 2, 5, "both handshakes counted")
    assert connectivity.check(ctx).ok


@pytest.mark.fault("endpoint presents a certificate for another name", "connectivity fails: mismatch named")
def test_wrong_certificate(guest_root: Path, monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    wrong = TlsServer(pki.wrong_name)
    try:
        ctx = ctx_for(guest_root, monkeypatch, [f"localhost:{wrong.port}"])
        with pytest.raises(PermanentFailure) as info:
            connectivity.run(ctx)
    finally:
        wrong.close()
    assert f"localhost:{wrong.port}: mismatch" in info.value.message
    assert "Hostname mismatch" in info.value.message
    assert "trust store" in info.value.remedy


@pytest.mark.fault("endpoint port closed", "connectivity fails transiently: refused named")
def test_closed_port(guest_root: Path, monkeypatch: pytest.MonkeyPatch, tls_server: TlsServer) -> None:
    closed = free_port()
    ctx = ctx_for(guest_root, monkeypatch, [f"localhost:{tls_server.port}", f"127.0.0.1:{closed}"])
    with pytest.raises(TransientFailure) as info:
        connectivity.run(ctx)
    assert info.value.message.startswith("1 of 2 Arc endpoints unreachable")
    assert f"127.0.0.1:{closed}: refused" in info.value.message
    assert "directly (no proxy configured)" in info.value.remedy
    assert not connectivity.check(ctx).ok


def test_through_connect_proxy(
    guest_root: Path, monkeypatch: pytest.MonkeyPatch, routed_proxy: ConnectProxy
) -> None:
    ctx = ctx_for(guest_root, monkeypatch, [f"{n}:443" for n in AZURE], https_proxy=routed_proxy.url)
    connectivity.run(ctx)
    assert sorted(routed_proxy.requests) == sorted(f"{n}:443" for n in AZURE)


@pytest.mark.fault("proxy refuses CONNECT (403)", "connectivity fails naming the proxy answer")
def test_proxy_refuses(guest_root: Path, monkeypatch: pytest.MonkeyPatch, tls_server: TlsServer) -> None:
    deny = ConnectProxy(deny={"management.azure.com:443"})
    try:
        ctx = ctx_for(guest_root, monkeypatch, ["management.azure.com:443"], https_proxy=deny.url)
        with pytest.raises(TransientFailure) as info:
            connectivity.run(ctx)
    finally:
        deny.close()
    assert "403 Forbidden" in info.value.message
    assert f"through the proxy {deny.url}" in info.value.remedy


@pytest.mark.fault(
    "TLS-intercepting proxy, its CA not installed", "diagnosed as interception; CA install fixes"
)
def test_intercepting_proxy_diagnosed_then_fixed_by_its_ca(
    guest_root: Path, monkeypatch: pytest.MonkeyPatch, pki: Pki
) -> None:
    mitm = ConnectProxy(intercept=pki.mitm_leaf)
    try:
        ctx = ctx_for(guest_root, monkeypatch, [f"{n}:443" for n in AZURE], https_proxy=mitm.url)
        with pytest.raises(PermanentFailure) as info:
            connectivity.run(ctx)
        assert info.value.message.startswith("TLS-intercepting proxy")
        assert "issued by 'commonName=Intercepting Proxy CA'" in info.value.message
        assert "proxy.ca_bundle_pem" in info.value.remedy
        # With the proxy's CA in the metadata, the proxy step installs it and the handshakes verify.
        ctx = ctx_for(
            guest_root,
            monkeypatch,
            [f"{n}:443" for n in AZURE],
            https_proxy=mitm.url,
            ca_bundle_pem=pki.mitm_ca.pem(),
        )
        proxy.run(ctx)
        connectivity.run(ctx)
        assert connectivity.check(ctx).ok
    finally:
        mitm.close()


def test_unresolvable_name_reported(guest_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ctx_for(guest_root, monkeypatch, ["does-not-exist.invalid:443"])
    with pytest.raises(TransientFailure) as info:
        connectivity.run(ctx)
    assert "does-not-exist.invalid:443: dns" in info.value.message


def test_no_proxy_entries_bypass_the_proxy() -> None:
    cfg = OnboardingConfig.model_validate(
        onboarding_config(
            proxy={"https_proxy": "http://proxy.corp:3128", "no_proxy": [".corp.test", "site.example"]}
        )
    )
    assert connectivity.proxy_for(cfg, "management.azure.com") == ("proxy.corp", 3128)
    assert connectivity.proxy_for(cfg, "git.corp.test") is None
    # Without a leading dot an entry covers its subdomains too, as az and the Azure SDK read NO_PROXY.
    assert connectivity.proxy_for(cfg, "mirror.site.example") is None
    assert connectivity.proxy_for(cfg, "othersite.example") == ("proxy.corp", 3128)
    assert connectivity.proxy_for(cfg, "localhost") is None
    assert socket.gethostbyname("localhost") in ("127.0.0.1", "::1")
