"""dns step against dnsmasq on loopback: healthy, NXDOMAIN, upstream timeout, SERVFAIL, the fix under --root.

The "system resolver" is whatever `<root>/etc/resolv.conf` names, asked on ARCBAKE_DNS_PORT. To run a broken
system resolver and a healthy upstream on the same port number, the broken one listens on ::1 and the
healthy one on 127.0.0.1; after the fix resolv.conf names 127.0.0.1 and the check passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures.dnsserver import DnsmasqHandle, ServfailResponder
from fixtures.firstboot_plugin import ARC_NAMES
from fixtures.guestinfo import DictSource, onboarding_config
from fixtures.ntp import SilentUdp

from firstboot.contract import OnboardingConfig
from firstboot.engine import build_context
from firstboot.step import Context, PermanentFailure, TransientFailure
from firstboot.steps import dns as dns_step

pytestmark = pytest.mark.integration

RECORDS = dict.fromkeys(ARC_NAMES, "127.0.0.1")
NOT_AZURE_COM = {k: v for k, v in RECORDS.items() if not k.endswith("azure.com")}


def ctx_for(
    root: Path,
    system: str,
    upstreams: list[str],
    port: int,
    apply_fix: bool = True,
    mp: pytest.MonkeyPatch | None = None,
) -> Context:
    resolv = root / "etc/resolv.conf"
    resolv.parent.mkdir(parents=True, exist_ok=True)
    resolv.write_text(f"# from DHCP\nsearch corp.test\nnameserver {system}\n")
    if mp is not None:
        mp.setenv("ARCBAKE_DNS_PORT", str(port))
    cfg = onboarding_config(upstreams=upstreams, dns_port=port)
    cfg["dns"]["apply_fix"] = apply_fix
    ctx = build_context(root, DictSource(), env={})
    ctx.config = OnboardingConfig.model_validate(cfg)
    return ctx


@pytest.fixture
def healthy(start_dns: Callable[..., DnsmasqHandle]) -> DnsmasqHandle:
    return start_dns(RECORDS)


@pytest.fixture
def broken_v6(healthy: DnsmasqHandle) -> Iterator[ServfailResponder]:
    responder = ServfailResponder(host="::1", port=healthy.port)
    yield responder
    responder.close()


def test_healthy_resolves_every_endpoint(
    guest_root: Path, healthy: DnsmasqHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = ctx_for(guest_root, "127.0.0.1", ["127.0.0.1"], healthy.port, mp=monkeypatch)
    started = time.monotonic()
    dns_step.run(ctx)
    assert time.monotonic() - started < 3
    assert (guest_root / "etc/rancher/k3s/resolv.conf").read_text().endswith("nameserver 127.0.0.1\n")
    # resolv.conf untouched when the system resolver works.
    assert "# from DHCP" in (guest_root / "etc/resolv.conf").read_text()
    result = dns_step.check(ctx)
    assert result.ok and f"{len(ARC_NAMES)} Arc endpoints" in result.message


def test_region_specific_names_come_from_arc_location() -> None:
    cfg = OnboardingConfig.model_validate(onboarding_config())
    names = {e.host for e in dns_step.endpoints(cfg, {})}
    assert "westeurope.dp.kubernetesconfiguration.azure.com" in names
    assert "westeurope.obo.arc.azure.com" in names and "management.azure.com" in names
    ports = {e.host: e.port for e in dns_step.endpoints(cfg, {})}
    assert ports["westeurope.obo.arc.azure.com"] == 8084 and ports["management.azure.com"] == 443
    override = dns_step.endpoints(cfg, {"ARCBAKE_ENDPOINTS_OVERRIDE": "a.test:8443, b.test"})
    assert override == [dns_step.Endpoint("a.test", 8443), dns_step.Endpoint("b.test", 443)]


@pytest.mark.fault("DNS answers NXDOMAIN for the Azure names", "dns fails permanently naming the names")
def test_nxdomain_names_the_hidden_names(
    guest_root: Path, start_dns: Callable[..., DnsmasqHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    # dnsmasq answers its hosts records before `address=`: leave the azure.com names out of them.
    server = start_dns(NOT_AZURE_COM, nxdomain=["azure.com"])
    ctx = ctx_for(guest_root, "127.0.0.1", ["127.0.0.1"], server.port, mp=monkeypatch)
    with pytest.raises(PermanentFailure) as info:
        dns_step.run(ctx)
    assert "NXDOMAIN" in info.value.message and "management.azure.com" in info.value.message
    assert "login.microsoftonline.com" not in info.value.message
    assert "allow the Arc endpoints" in info.value.remedy


@pytest.mark.fault("upstream of the DNS server never answers", "dns fails within seconds, naming the servers")
def test_upstream_timeout_reported_within_seconds(
    guest_root: Path,
    start_dns: Callable[..., DnsmasqHandle],
    silent_udp: SilentUdp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No records for azure.com: those names are forwarded to an upstream that never answers.
    server = start_dns(NOT_AZURE_COM, forward_silent={"azure.com": silent_udp.port})
    ctx = ctx_for(guest_root, "127.0.0.1", ["127.0.0.1"], server.port, mp=monkeypatch)
    started = time.monotonic()
    with pytest.raises(TransientFailure) as info:
        dns_step.run(ctx)
    assert time.monotonic() - started < 5
    assert "timeout" in info.value.message and "management.azure.com" in info.value.message
    assert f"127.0.0.1:{server.port}" in info.value.message


@pytest.mark.fault(
    "system resolver SERVFAIL, upstream healthy, apply_fix false", "dns fails, remedy apply_fix"
)
def test_servfail_system_resolver_without_fix(
    guest_root: Path, healthy: DnsmasqHandle, broken_v6: ServfailResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = ctx_for(guest_root, "::1", ["127.0.0.1"], healthy.port, apply_fix=False, mp=monkeypatch)
    with pytest.raises(PermanentFailure) as info:
        dns_step.run(ctx)
    assert "system resolver fails (servfail" in info.value.message
    assert "dns.apply_fix: true" in info.value.remedy
    assert broken_v6.queries > 0
    assert "nameserver ::1" in (guest_root / "etc/resolv.conf").read_text()


@pytest.mark.fault(
    "system resolver SERVFAIL, upstream healthy", "fix applied under --root, check passes after"
)
def test_fix_applied_under_root_then_check_passes(
    guest_root: Path, healthy: DnsmasqHandle, broken_v6: ServfailResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = ctx_for(guest_root, "::1", ["127.0.0.1"], healthy.port, mp=monkeypatch)
    assert not dns_step.check(ctx).ok
    dns_step.run(ctx)
    resolv = (guest_root / "etc/resolv.conf").read_text()
    assert "nameserver 127.0.0.1" in resolv and "::1" not in resolv and "search example.test" in resolv
    nm = (guest_root / "etc/NetworkManager/conf.d/90-arcbake-dns.conf").read_text()
    assert "dns=none" in nm and "rc-manager=unmanaged" in nm
    assert (guest_root / "etc/rancher/k3s/resolv.conf").read_text().endswith("nameserver 127.0.0.1\n")
    assert dns_step.check(ctx).ok


@pytest.mark.fault("system resolver and upstreams SERVFAIL", "dns fails transiently, both named")
def test_servfail_everywhere(
    guest_root: Path, servfail_dns: ServfailResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = ctx_for(guest_root, "127.0.0.1", ["127.0.0.1"], servfail_dns.port, mp=monkeypatch)
    with pytest.raises(TransientFailure) as info:
        dns_step.run(ctx)
    assert "nothing resolves" in info.value.message and "servfail" in info.value.message
    assert f"system resolver (127.0.0.1:{servfail_dns.port})" in info.value.message
    assert servfail_dns.queries > 0


@pytest.mark.fault("no DNS server answers at all", "dns fails within ~timeout naming every server tried")
def test_nothing_answers_fails_fast_naming_servers(
    guest_root: Path, monkeypatch: pytest.MonkeyPatch, silent_udp: SilentUdp
) -> None:
    v6 = SilentUdp(host="::1", bind_port=silent_udp.port)
    try:
        ctx = ctx_for(guest_root, "::1", ["127.0.0.1"], silent_udp.port, mp=monkeypatch)
        started = time.monotonic()
        with pytest.raises(TransientFailure) as info:
            dns_step.run(ctx)
        elapsed = time.monotonic() - started
    finally:
        v6.close()
    assert elapsed < 3, elapsed
    assert f"system resolver (::1:{silent_udp.port})" in info.value.message
    assert f"upstreams (127.0.0.1:{silent_udp.port})" in info.value.message
    assert "port 53" in info.value.remedy
    # Nothing was "fixed" when the upstreams do not answer either.
    assert "nameserver ::1" in (guest_root / "etc/resolv.conf").read_text()
