"""The K3s clusters of a fleet, and whether a template's firewall profile can carry them.

A cluster is its initialising server (a server that joins nobody), the servers that join it (embedded
etcd) and the agents that join any of its servers. The template records the firewall profile it was built
with (`arcbake.image.firewall_profile` in its extraConfig, written by `builder build` from
`render_context.LINEAGE_KEYS`); deploy refuses (exit 3) a fleet whose clusters need ports that profile
keeps closed (K3s docs, "Inbound rules for K3s nodes"):

| cluster | needs | why |
| --- | --- | --- |
| one server | `single-node` | 6443/tcp, 10250/tcp |
| servers + agents | `multi-node` | + flannel 8472/udp (VXLAN), 51820-51821/udp (WireGuard) |
| 2+ servers | `ha-etcd` | + etcd 2379-2380/tcp between servers |

The template also records the K3s address ranges its firewall trusts (`arcbake.image.k3s_network`, pod
CIDR, service CIDR, cluster DNS): a clone running K3s with other ranges would have its pod traffic dropped,
so deploy refuses those too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from builder.spec import FirewallProfile
from firstboot.contract import K3sNetwork, OnboardingConfig, Role

LOG = logging.getLogger(__name__)

PROFILE_KEY = "arcbake.image.firewall_profile"
NETWORK_KEY = "arcbake.image.k3s_network"
# Each profile opens what the ones before it open, and more.
_ORDER = [FirewallProfile.SINGLE_NODE, FirewallProfile.MULTI_NODE, FirewallProfile.HA_ETCD]
_CLOSED = {
    FirewallProfile.SINGLE_NODE: "flannel 8472/udp and 51820-51821/udp are closed",
    FirewallProfile.MULTI_NODE: "etcd 2379-2380/tcp is closed",
}


class Node(Protocol):
    """What topology needs of a fleet VM."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> Role: ...

    @property
    def server(self) -> str | None: ...


class ClusterNode(Node, Protocol):
    """A fleet VM with its clone configuration."""

    @property
    def config(self) -> OnboardingConfig: ...


@dataclass(frozen=True)
class Cluster:
    """One K3s cluster of a fleet: VM names, the initialising server first."""

    servers: tuple[str, ...]
    agents: tuple[str, ...]

    @property
    def name(self) -> str:
        """The initialising server's VM name."""
        return self.servers[0]

    def needs(self) -> FirewallProfile:
        """The smallest firewall profile that carries this cluster."""
        if len(self.servers) > 1:
            return FirewallProfile.HA_ETCD
        return FirewallProfile.MULTI_NODE if self.agents else FirewallProfile.SINGLE_NODE

    def describe(self) -> str:
        """`cluster of edge-01: 3 servers + 2 agents`."""
        s, a = len(self.servers), len(self.agents)
        return f"cluster of {self.name}: {s} server{'s' * (s != 1)} + {a} agent{'s' * (a != 1)}"


def clusters(vms: Iterable[Node]) -> list[Cluster]:
    """Group VMs by the initialising server they (or the server they join) lead back to."""
    nodes = {vm.name: vm for vm in vms}

    def root(name: str) -> str:
        seen = set()
        while (joined := nodes[name].server) is not None and joined in nodes and name not in seen:
            seen.add(name)
            name = joined
        return name

    servers: dict[str, list[str]] = {}
    agents: dict[str, list[str]] = {}
    for vm in nodes.values():
        head = root(vm.name)
        servers.setdefault(head, [])
        agents.setdefault(head, [])
        if vm.role is Role.SERVER:
            (servers[head].insert(0, vm.name) if vm.name == head else servers[head].append(vm.name))
        else:
            agents[head].append(vm.name)
    return [Cluster(tuple(servers[h]), tuple(agents[h])) for h in servers]


def profile_problems(vms: Iterable[Node], profile: str | None, template: str) -> list[str]:
    """Why `template`'s recorded firewall profile cannot carry the fleet's clusters (empty: it can)."""
    if profile is None:
        LOG.warning(
            "template %s records no firewall profile (built before arcbake recorded it): "
            "deploy cannot check that its firewall carries the fleet's clusters",
            template,
        )
        return []
    try:
        have = FirewallProfile(profile)
    except ValueError:
        return [f"template {template!r} records an unknown firewall profile {profile!r}"]
    problems = []
    for cluster in clusters(vms):
        need = cluster.needs()
        if _ORDER.index(need) > _ORDER.index(have):
            problems.append(
                f"{cluster.describe()} needs firewall profile {need.value!r}, but template {template!r} "
                f"was built with {have.value!r} ({_CLOSED[have]}): rebuild the template with "
                f"firewall.profile: {need.value}"
            )
    return problems


def network_record(net: K3sNetwork) -> str:
    """`CLUSTER_CIDR SERVICE_CIDR CLUSTER_DNS`, as a template records them."""
    return f"{net.cluster_cidr} {net.service_cidr} {net.cluster_dns}"


def network_problems(vms: Iterable[ClusterNode], recorded: str | None, template: str) -> list[str]:
    """VMs whose K3s address ranges differ from those `template`'s firewall was built for."""
    if recorded is None:
        return []
    problems = []
    for vm in vms:
        mine = network_record(vm.config.k3s)
        if mine != recorded:
            problems.append(
                f"VM {vm.name!r} runs K3s with {mine} (cluster_cidr service_cidr cluster_dns), but template "
                f"{template!r} trusts {recorded} in its firewall: set k3s.cluster_cidr, service_cidr and "
                "cluster_dns in the fleet to the template's, or rebuild the template with the fleet's"
            )
    return problems
