"""time step against chronyd serving NTP on loopback: in sync, skewed (faketime), unsynced, no answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.dnsserver import DnsmasqHandle
from fixtures.firstboot_plugin import ARC_NAMES
from fixtures.guestinfo import DictSource, onboarding_config, write_metadata
from fixtures.ntp import NtpHandle, SilentUdp

from firstboot import steps
from firstboot.contract import OnboardingConfig
from firstboot.engine import Engine, build_context
from firstboot.sources import FileSource
from firstboot.step import Context, TransientFailure
from firstboot.steps import time as time_step

pytestmark = pytest.mark.integration


def ctx_for(root: Path, port: int, servers: list[str] | None = None, max_offset: float = 5.0) -> Context:
    ctx = build_context(root, DictSource(), env={})
    cfg = onboarding_config(ntp_port=port, ntp_servers=servers)
    cfg["time"]["max_offset_seconds"] = max_offset
    ctx.config = OnboardingConfig.model_validate(cfg)
    return ctx


def test_in_sync_writes_sources_and_passes(guest_root: Path, ntp_synced: NtpHandle) -> None:
    ctx = ctx_for(guest_root, ntp_synced.port)
    time_step.run(ctx)
    sources = (guest_root / "etc/chrony.d/arcbake.sources").read_text()
    assert f"server 127.0.0.1 iburst port {ntp_synced.port}" in sources
    result = time_step.check(ctx)
    assert result.ok and "against 127.0.0.1 (stratum 8)" in result.message


def test_el8_chrony_conf_server_lines_replaced(guest_root: Path, ntp_synced: NtpHandle) -> None:
    conf = guest_root / "etc/chrony.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("pool 2.rhel.pool.ntp.org iburst\ndriftfile /var/lib/chrony/drift\nmakestep 1.0 3\n")
    time_step.run(ctx_for(guest_root, ntp_synced.port))
    lines = conf.read_text().splitlines()
    assert "pool 2.rhel.pool.ntp.org iburst" not in lines
    assert "makestep 1.0 3" in lines and f"server 127.0.0.1 iburst port {ntp_synced.port}" in lines
    assert not (guest_root / "etc/chrony.d").exists()


def test_sourcedir_conf_gets_a_sources_file(guest_root: Path, ntp_synced: NtpHandle) -> None:
    conf = guest_root / "etc/chrony.conf"
    conf.parent.mkdir(parents=True)
    original = "pool 2.rhel.pool.ntp.org iburst\nsourcedir /etc/chrony.d\n"
    conf.write_text(original)
    time_step.run(ctx_for(guest_root, ntp_synced.port))
    assert conf.read_text() == original
    assert (guest_root / "etc/chrony.d/arcbake.sources").exists()


@pytest.mark.fault("NTP server clock 120 s ahead (faketime)", "time fails: offset named, remedy makestep")
def test_skewed_server_fails_with_the_offset(guest_root: Path, start_ntp: Callable[..., NtpHandle]) -> None:
    skewed = start_ntp(skew_seconds=120)
    ctx = ctx_for(guest_root, skewed.port)
    with pytest.raises(TransientFailure) as info:
        time_step.run(ctx)
    assert "off by +120." in info.value.message and "limit 5 s" in info.value.message
    assert "chronyc makestep" in info.value.remedy
    assert not time_step.check(ctx).ok
    # A threshold above the skew accepts it.
    assert time_step.check(ctx_for(guest_root, skewed.port, max_offset=300)).ok


@pytest.mark.fault("NTP server unsynchronised (leap 3, stratum 0)", "time fails naming leap/stratum")
def test_unsynchronised_server_fails(guest_root: Path, start_ntp: Callable[..., NtpHandle]) -> None:
    server = start_ntp(mode="unsynced")
    with pytest.raises(TransientFailure) as info:
        time_step.run(ctx_for(guest_root, server.port))
    assert "not synchronised themselves" in info.value.message
    assert "leap 3, stratum 0" in info.value.message


@pytest.mark.fault("NTP server never answers", "time fails naming the servers and the UDP port")
def test_no_answer_fails_naming_the_servers(guest_root: Path, silent_udp: SilentUdp) -> None:
    ctx = ctx_for(guest_root, silent_udp.port, servers=["127.0.0.1", "localhost"])
    with pytest.raises(TransientFailure) as info:
        time_step.run(ctx)
    assert f"127.0.0.1:{silent_udp.port}, localhost:{silent_udp.port}" in info.value.message
    assert f"UDP port {silent_udp.port}" in info.value.remedy


@pytest.mark.fault(
    "the clone's resolver forwards to a dead upstream; NTP given by name",
    "dns repairs the resolver first, then time resolves the NTP name through it and passes",
)
def test_ntp_name_resolves_after_the_dns_repair(
    guest_root: Path,
    tmp_path: Path,
    ntp_synced: NtpHandle,
    start_dns: Callable[..., DnsmasqHandle],
    silent_udp: SilentUdp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The configured upstream (dns.upstream_servers) knows every name; the VM's resolver (a forwarder on
    # ::1, same port number, as DHCP or VMware would hand it out) forwards everything to a dead upstream.
    names = {**dict.fromkeys(ARC_NAMES, "127.0.0.1"), "ntp.site.test": "127.0.0.1"}
    upstream = start_dns(names)
    dead = dict.fromkeys(["com", "net", "test"], silent_udp.port)
    start_dns(host="::1", port=upstream.port, forward_silent=dead)
    (guest_root / "etc").mkdir()
    (guest_root / "etc/resolv.conf").write_text("search site.test\nnameserver ::1\n")
    monkeypatch.setenv("ARCBAKE_DNS_PORT", str(upstream.port))
    config = onboarding_config(
        ntp_servers=["ntp.site.test"], ntp_port=ntp_synced.port, dns_port=upstream.port
    )
    meta = write_metadata(tmp_path / "meta.json", config, secrets={"sp_secret": "s"})
    ctx = build_context(guest_root, FileSource(meta), env={}, time_scale=0.01)
    result = Engine(ctx, steps.load(["metadata", "hostname", "dns", "time"])).run()
    assert result.ok, result.status
    resolv = (guest_root / "etc/resolv.conf").read_text()
    assert "nameserver 127.0.0.1" in resolv and "::1" not in resolv
    assert "search site.test example.test" in resolv
    assert "server ntp.site.test iburst" in (guest_root / "etc/chrony.d/arcbake.sources").read_text()
    assert time_step.check(ctx).ok


def test_ntp_name_the_resolver_cannot_find_names_the_link(guest_root: Path, ntp_synced: NtpHandle) -> None:
    (guest_root / "etc").mkdir()
    (guest_root / "etc/resolv.conf").write_text("")
    ctx = ctx_for(guest_root, ntp_synced.port, servers=["ntp.nowhere.test"])
    with pytest.raises(TransientFailure) as info:
        time_step.run(ctx)
    assert "ntp.nowhere.test" in info.value.message and "do not resolve" in info.value.message
    assert "dns" in info.value.remedy
