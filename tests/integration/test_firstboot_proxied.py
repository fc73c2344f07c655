"""A proxied site: the node resolves only local names (its resolver says NXDOMAIN for Azure's), reaches
Azure only through the CONNECT proxy, and the proxy refuses what a default Squid refuses (CONNECT to 8084).

Endpoints after Microsoft's "Azure Arc-enabled Kubernetes network requirements" (firstboot/endpoints.py):
the cluster connect and Azure RBAC ones are warnings unless `arc.features` enables them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from doubles.world import onboarding_world, run_once
from fixtures.dnsserver import DnsmasqHandle
from fixtures.firstboot_plugin import REGION, PreflightWorld
from fixtures.guestinfo import DictSource, write_metadata

from firstboot import endpoints, steps
from firstboot.contract import OnboardingConfig
from firstboot.engine import Engine, build_context
from firstboot.sources import FileSource
from firstboot.step import Context, TransientFailure
from firstboot.steps import connectivity

pytestmark = pytest.mark.integration

PREFLIGHT = ["metadata", "hostname", "dns", "time", "proxy", "connectivity", "resources"]
OBO = f"{REGION}.obo.arc.azure.com:8084"
GRAPH = "graph.microsoft.com:443"


@pytest.fixture
def site_only_resolver(
    preflight_world: PreflightWorld, start_dns: Callable[..., DnsmasqHandle], guest_root: Path
) -> Path:
    """The node's resolver (::1, same port as the world's): local names only, NXDOMAIN for the public ones."""
    start_dns(
        {"ntp.site.test": "127.0.0.1"}, nxdomain=["com", "net"], host="::1", port=preflight_world.dns.port
    )
    (guest_root / "etc").mkdir(parents=True, exist_ok=True)
    (guest_root / "etc/resolv.conf").write_text("search site.test\nnameserver ::1\n")
    return guest_root


@pytest.mark.fault(
    "behind a proxy, the node's resolver answers NXDOMAIN for every Azure name",
    "the preflight passes: nothing public is resolved locally, every endpoint is reached through CONNECT",
)
def test_proxied_node_without_public_dns_passes_the_preflight(
    preflight_world: PreflightWorld,
    site_only_resolver: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = site_only_resolver
    config = preflight_world.config | {
        "time": preflight_world.config["time"] | {"ntp_servers": ["ntp.site.test"]},
    }
    meta = write_metadata(tmp_path / "meta.json", config, secrets={"sp_secret": "s"})
    caplog.set_level(logging.WARNING)
    result = Engine(build_context(root, FileSource(meta)), steps.load(PREFLIGHT)).run()
    assert result.ok, result.status
    # The site's resolver stays: it answers, and the proxy resolves Azure's names.
    assert (root / "etc/resolv.conf").read_text() == "search site.test\nnameserver ::1\n"
    assert not (root / "etc/NetworkManager").exists()
    assert "the proxy resolves them" in caplog.text
    cfg = OnboardingConfig.model_validate(config)
    needed = {e.label for e in endpoints.endpoints(cfg, {}) if endpoints.required(cfg, e)}
    assert needed <= set(preflight_world.proxy.requests)


@pytest.mark.fault(
    "behind a proxy, neither the node's resolver nor the cluster DNS resolves any Azure name",
    "the node onboards: k3s, Arc and Flux through the proxy; the site's resolver is kept",
)
def test_proxied_node_without_public_dns_onboards(
    preflight_world: PreflightWorld, site_only_resolver: Path, tmp_path: Path
) -> None:
    root = site_only_resolver
    cluster_only = {"kubernetes.default.svc.cluster.local": "10.43.0.1"}
    with onboarding_world(preflight_world, root, tmp_path / "world", cluster_records=cluster_only) as world:
        # onboarding_world points the node at the world's resolver: put the site's back.
        (root / "etc/resolv.conf").write_text("search site.test\nnameserver ::1\n")
        proc = run_once(world)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert world.status()["state"] == "done"
        assert len(world.az_calls("connectedk8s", "connect")) == 1
    assert (root / "etc/resolv.conf").read_text() == "search site.test\nnameserver ::1\n"


def ctx_with(world: PreflightWorld, root: Path, **features: bool) -> Context:
    ctx = build_context(world.prepare_root(root), DictSource(), env={})
    arc = world.config["arc"] | {"features": features}
    ctx.config = OnboardingConfig.model_validate(world.config | {"arc": arc})
    return ctx


@pytest.mark.fault(
    "the proxy refuses CONNECT to <region>.obo.arc.azure.com:8084 and graph.microsoft.com",
    "a warning while cluster connect and Azure RBAC are off; a failure naming port 8084 once enabled",
)
def test_feature_endpoints_are_warnings_unless_enabled(
    preflight_world: PreflightWorld, guest_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    preflight_world.proxy.deny |= {OBO, GRAPH}
    caplog.set_level(logging.WARNING)
    ctx = ctx_with(preflight_world, guest_root)
    connectivity.run(ctx)
    assert OBO in caplog.text and "arc.features.cluster_connect is off" in caplog.text
    assert GRAPH in caplog.text and "arc.features.azure_rbac is off" in caplog.text
    check = connectivity.check(ctx)
    assert check.ok and "2 feature-only endpoint(s) unreachable" in check.message

    with pytest.raises(TransientFailure) as info:
        connectivity.run(ctx_with(preflight_world, guest_root, cluster_connect=True))
    assert OBO in info.value.message and GRAPH not in info.value.message
    assert info.value.remedy and "8084" in info.value.remedy and "SSL_ports" in info.value.remedy

    with pytest.raises(TransientFailure) as info:
        connectivity.run(ctx_with(preflight_world, guest_root, azure_rbac=True))
    assert GRAPH in info.value.message and OBO not in info.value.message
