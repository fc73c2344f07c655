"""Clusters of a fleet and the firewall profile they need (builder/topology.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from builder import topology
from builder.spec import FirewallProfile
from firstboot.contract import OnboardingConfig, Role


@dataclass(frozen=True)
class Vm:
    name: str
    role: Role
    server: str | None = None


S, A = Role.SERVER, Role.AGENT
DEMO = [Vm("s1", S), Vm("a1", A, "s1"), Vm("a2", A, "s1")]
HA = [Vm("s1", S), Vm("s2", S, "s1"), Vm("s3", S, "s1"), Vm("a1", A, "s2"), Vm("a2", A, "s1")]
TWO = [Vm("lone", S), *DEMO]


def test_clusters_group_by_initialising_server() -> None:
    assert topology.clusters(HA) == [topology.Cluster(("s1", "s2", "s3"), ("a1", "a2"))]
    assert [c.needs() for c in topology.clusters(TWO)] == [
        FirewallProfile.SINGLE_NODE,
        FirewallProfile.MULTI_NODE,
    ]


@pytest.mark.parametrize(
    ("vms", "profile", "refused"),
    [
        (DEMO, "single-node", "cluster of s1: 1 server + 2 agents needs firewall profile 'multi-node', but "
                              "template 't' was built with 'single-node' (flannel 8472/udp"),
        (HA, "multi-node", "3 servers + 2 agents needs firewall profile 'ha-etcd'"),
        (HA, "single-node", "needs firewall profile 'ha-etcd'"),
        (DEMO, "multi-node", None),
        (HA, "ha-etcd", None),
        (TWO, "multi-node", None),
        (DEMO, None, None),  # a template from before the key: a warning, not a refusal
        (DEMO, "open-all", "unknown firewall profile 'open-all'"),
    ],
)  # fmt: skip
def test_profile_problems(vms: list[Vm], profile: str | None, refused: str | None) -> None:
    problems = topology.profile_problems(vms, profile, "t")
    if refused is None:
        assert problems == []
    else:
        assert len(problems) == 1 and refused in problems[0]


AGENT_CONFIG = OnboardingConfig.model_validate(
    {
        "hostname": "h",
        "time": {"ntp_servers": ["ntp"]},
        "k3s": {"role": "agent", "server_url": "https://s:6443"},
    }
)


@dataclass(frozen=True)
class Configured(Vm):
    config: OnboardingConfig = AGENT_CONFIG


def test_network_problems() -> None:
    vms = [Configured("a1", A, "s1")]
    assert topology.network_problems(vms, "10.42.0.0/16 10.43.0.0/16 10.43.0.10", "t") == []
    assert topology.network_problems(vms, None, "t") == []  # a template from before the key
    (problem,) = topology.network_problems(vms, "10.52.0.0/16 10.53.0.0/16 10.53.0.10", "t")
    assert "VM 'a1' runs K3s with 10.42.0.0/16 10.43.0.0/16 10.43.0.10" in problem
