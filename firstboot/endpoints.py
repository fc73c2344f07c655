"""The endpoints Azure Arc-enabled Kubernetes reaches, split into required and feature-dependent.

From Microsoft's "Azure Arc-enabled Kubernetes network requirements"
(https://learn.microsoft.com/en-us/azure/azure-arc/kubernetes/network-requirements), outbound TCP 443 unless
a port is given; wildcards are represented by their regional instance:

- required by the agents and `az connectedk8s connect`: management.azure.com,
  <region>.dp.kubernetesconfiguration.azure.com, login.microsoftonline.com, <region>.login.microsoft.com,
  login.windows.net, mcr.microsoft.com, *.data.mcr.microsoft.com, gbl.his.arc.azure.com,
  k8connecthelm.azureedge.net;
- cluster connect ("for cluster connect based scenarios and custom location based scenarios": the guest
  notification service, sts.windows.net, k8sconnectcsp.azureedge.net; "required when cluster connect is
  configured": https://<region>.obo.arc.azure.com:8084/);
- Azure RBAC ("required when Azure RBAC is configured": https://graph.microsoft.com/).

A feature-dependent endpoint is required only when `arc.features` enables its feature; otherwise the
connectivity step reports it unreachable as a warning. `ARCBAKE_ENDPOINTS_OVERRIDE` (comma list of
`host[:port]`, all required) replaces the list (test seam).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from firstboot.contract import OnboardingConfig

ENDPOINTS_OVERRIDE_ENV = "ARCBAKE_ENDPOINTS_OVERRIDE"
CLUSTER_CONNECT = "cluster_connect"
AZURE_RBAC = "azure_rbac"

REQUIRED: tuple[str, ...] = (
    "management.azure.com",
    "login.microsoftonline.com",
    "login.windows.net",
    "mcr.microsoft.com",
    "gbl.his.arc.azure.com",
    "k8connecthelm.azureedge.net",
    "{region}.dp.kubernetesconfiguration.azure.com",
    "{region}.login.microsoft.com",
    "{region}.data.mcr.microsoft.com",
)
BY_FEATURE: dict[str, tuple[str, ...]] = {
    CLUSTER_CONNECT: (
        "guestnotificationservice.azure.com",
        "sts.windows.net",
        "k8sconnectcsp.azureedge.net",
        # Not 443: a default Squid refuses CONNECT to it (not in its SSL_ports).
        "{region}.obo.arc.azure.com:8084",
    ),
    AZURE_RBAC: ("graph.microsoft.com",),
}


@dataclass(frozen=True)
class Endpoint:
    """A name Arc reaches, the port, and the feature that needs it (None: always required)."""

    host: str
    port: int = 443
    feature: str | None = None

    @property
    def label(self) -> str:
        """host:port."""
        return f"{self.host}:{self.port}"


def parse_endpoint(item: str, feature: str | None = None) -> Endpoint:
    """`host` or `host:port` (port 443 when absent)."""
    host, sep, port = item.rpartition(":")
    if sep and port.isdigit() and host and ":" not in host:
        return Endpoint(host, int(port), feature)
    return Endpoint(item, 443, feature)


def endpoints(config: OnboardingConfig, environ: Mapping[str, str] | None = None) -> list[Endpoint]:
    """Every endpoint for the config's region (regional ones only when `arc.location` is known), tagged
    with its feature; the override when set."""
    raw = (environ if environ is not None else os.environ).get(ENDPOINTS_OVERRIDE_ENV, "").strip()
    if raw:
        return [parse_endpoint(item) for item in filter(None, (part.strip() for part in raw.split(",")))]
    region = config.arc.location if config.arc is not None else None

    def expand(patterns: tuple[str, ...], feature: str | None) -> list[Endpoint]:
        return [
            parse_endpoint(p.format(region=region), feature)
            for p in patterns
            if region or "{region}" not in p
        ]

    out = expand(REQUIRED, None)
    for feature, patterns in BY_FEATURE.items():
        out += expand(patterns, feature)
    return out


def required(config: OnboardingConfig, endpoint: Endpoint) -> bool:
    """Whether the clone must reach `endpoint`: always, or when `arc.features` enables its feature."""
    if endpoint.feature is None:
        return True
    features = config.arc.features if config.arc is not None else None
    return bool(features and getattr(features, endpoint.feature))
