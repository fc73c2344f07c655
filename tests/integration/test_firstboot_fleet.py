"""Multi-node worlds: several clones boot through `firstboot run` against shared doubles that enforce
K3s's rules (flag tables per role, one join token per cluster: tests/doubles/k3s_rules.py and the
systemctl double's cluster registry). Arc and Flux run once per cluster, on the server that starts it;
the other nodes are done once they have joined."""

from __future__ import annotations

from pathlib import Path

import pytest
from doubles.harness import K3S_TOKEN
from doubles.world import FleetWorld, Node, fleet_world
from fixtures.firstboot_plugin import PreflightWorld

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.allow_subp(all=True)]

SERVER_URL = "https://10.0.0.1:6443"


def agent(name: str, address: str, token: str | None = K3S_TOKEN) -> Node:
    return Node(name, address, {"role": "agent", "server_url": SERVER_URL}, token)


def run_to_done(world: FleetWorld, names: list[str]) -> None:
    """`firstboot run` on `names` at once; each must finish `done`."""
    world.run(names)
    for name in names:
        proc = world.nodes[name].runs[-1]
        assert proc.returncode == 0, f"{name}:\n{proc.stdout[-3000:]}"
        assert world.nodes[name].status()["state"] == "done"


def test_server_and_two_agents(preflight_world: PreflightWorld, tmp_path: Path) -> None:
    nodes = [Node("s1", "10.0.0.1", {"role": "server"}), agent("a1", "10.0.0.2"), agent("a2", "10.0.0.3")]
    with fleet_world(preflight_world, tmp_path / "fleet", nodes) as world:
        run_to_done(world, ["s1", "a1", "a2"])  # booted together, as deploy powers them on
        assert world.refusals() == []
        cluster = world.registry()
        assert list(cluster) == ["10.0.0.1"] and cluster["10.0.0.1"]["token"] == K3S_TOKEN
        assert cluster["10.0.0.1"]["etcd"] is False
        assert sorted(m["address"] for m in cluster["10.0.0.1"]["members"]) == [
            "10.0.0.1",
            "10.0.0.2",
            "10.0.0.3",
        ]
        # Arc and Flux once, for the cluster, from its server; the agents never call az nor Resource Manager.
        assert len(world.az_calls("connectedk8s", "connect")) == 1
        assert len(world.arm_writes("fluxConfigurations")) == 1
        assert world.nodes["a1"].stamped("k3s", "vm-a1") and not world.nodes["a1"].stamped("arc", "vm-a1")
        for name in ("a1", "a2"):
            assert "skipped (this node joins a cluster" in world.nodes[name].runs[-1].stdout


def test_three_etcd_servers_and_two_agents(preflight_world: PreflightWorld, tmp_path: Path) -> None:
    join = {"role": "server", "server_url": SERVER_URL}
    nodes = [
        Node("s1", "10.0.0.1", {"role": "server", "cluster_init": True}),
        Node("s2", "10.0.0.2", join),
        Node("s3", "10.0.0.3", join),
        agent("a1", "10.0.0.4"),
        Node("a2", "10.0.0.5", {"role": "agent", "server_url": "https://10.0.0.2:6443"}),
    ]
    with fleet_world(preflight_world, tmp_path / "fleet", nodes) as world:
        # Booted together: each joiner's K3s waits until the server it names is up (a2 names s2).
        run_to_done(world, ["s1", "s2", "s3", "a1", "a2"])
        assert world.refusals() == []
        clusters = {a: e for a, e in world.registry().items() if "alias_of" not in e}
        assert list(clusters) == ["10.0.0.1"]
        cluster = clusters["10.0.0.1"]
        assert cluster["etcd"] is True and cluster["token"] == K3S_TOKEN
        members = cluster["members"]
        assert sorted(m["address"] for m in members) == [f"10.0.0.{n}" for n in range(1, 6)]
        assert [m["address"] for m in members if m["init"]] == ["10.0.0.1"]  # one cluster-init server
        assert len(world.az_calls("connectedk8s", "connect")) == 1
        for name in ("s2", "s3", "a1", "a2"):
            assert not world.nodes[name].stamped("arc", f"vm-{name}")
            assert world.nodes[name].stamped("k3s", f"vm-{name}")


def test_an_agent_with_another_token_is_refused_by_k3s(
    preflight_world: PreflightWorld, tmp_path: Path
) -> None:
    nodes = [
        Node("s1", "10.0.0.1", {"role": "server"}),
        agent("a9", "10.0.0.9", token="not-the-cluster-token"),
    ]
    with fleet_world(preflight_world, tmp_path / "fleet", nodes) as world:
        run_to_done(world, ["s1"])
        world.nodes["a9"].env["ARCBAKE_TIME_SCALE"] = "0.02"
        result = world.run(["a9"])["a9"]
        assert result.returncode == 1
        status = world.nodes["a9"].status()
        assert status["state"] == "failed" and status["step"] == "k3s"
        # Each attempt of the step started the unit again; K3s refused every one for the token.
        refusals = world.refusals()
        assert refusals and {r["unit"] for r in refusals} == {"k3s-agent"}
        assert all("token CA hash does not match" in r["message"] for r in refusals)
        assert [m["address"] for m in world.registry()["10.0.0.1"]["members"]] == ["10.0.0.1"]
        assert "not-the-cluster-token" not in result.stdout
