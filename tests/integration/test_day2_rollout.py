"""builder rollout on the vCenter simulator, with the guests played through the vSphere API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from doubles.arm_double import ArmDouble
from fixtures.guest_player import playing
from fixtures.vcsim import VcsimHandle

from builder import fleetvms
from builder import rollout as ro
from builder.deploy import fleet_marks
from builder.fleet import load_fleet
from builder.rotate import KEY_GENERATION
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from firstboot.contract import KEY_NODES_DELETE, NodesDeleteRequest, OnboardingConfig
from integration.vsphere_helpers import (
    DEMO_ARC_ID,
    SECRET_ENV,
    cloudinit_decode,
    deployed,
    fleet_file,
    reported_ready,
    run_cli,
    session_for,
    vm_extra,
    vm_info,
    vm_macs,
)

pytestmark = pytest.mark.integration

FAST = ("--timeout", "60", "--interval", "0.05")


def rebuild(path: Path) -> tuple[str, ...]:
    """`builder rollout` onto DC0_H0_VM1 with --rebuild-cluster --yes, polling fast."""
    return ("rollout", str(path), "--template", "DC0_H0_VM1", "--rebuild-cluster", "--yes", *FAST)


def sources(sim: VcsimHandle, names: list[str]) -> dict[str, tuple[str | None, str, int]]:
    """name -> (source template, power, how many VMs of that name or its .rollout twin)."""
    with session_for(sim) as s:
        found = fleetvms.by_name(fleetvms.read_all(s, inventory.datacenter(s, "DC0")))
    out = {}
    for n in names:
        recs = found.get(n, [])
        twins = found.get(n + fleetvms.ROLLOUT_SUFFIX, [])
        out[n] = (
            recs[0].source_template if recs else None,
            recs[0].power if recs else "-",
            len(recs) + len(twins),
        )
    return out


def test_single_server_cluster_is_refused_without_rebuild(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet, _vms = deployed(vcsim, tmp_path, "rs")
    dry = run_cli(vcsim, "rollout", str(fleet), "--template", "DC0_H0_VM1", "--dry-run")
    assert dry.exit_code == 1
    assert "cluster rs-01 has a single server (rs-01)" in dry.stdout and "--rebuild-cluster" in dry.stdout
    refused = run_cli(vcsim, "rollout", str(fleet), "--template", "DC0_H0_VM1", "--yes")
    assert refused.exit_code == 1 and "nothing was changed" in refused.stderr
    # With --rebuild-cluster the dry run shows the order: the server first, then the agents.
    plan = run_cli(vcsim, "rollout", str(fleet), "--template", "DC0_H0_VM1", "--dry-run", "--rebuild-cluster")
    assert plan.exit_code == 0, plan.output
    order = [ln.split()[1] for ln in plan.stdout.splitlines()[1:]]
    assert order == ["rs-01", "rs-02", "rs-03"]
    assert "rs-01 (server, cluster rs-01): rebuild from DC0_H0_VM0" in plan.stdout
    assert {k: v[0] for k, v in sources(vcsim, ["rs-01", "rs-02", "rs-03"]).items()} == {
        "rs-01": "DC0_H0_VM0",
        "rs-02": "DC0_H0_VM0",
        "rs-03": "DC0_H0_VM0",
    }
    assert vm_info(vcsim, "rs-01.rollout")["count"] == 0


def test_rollout_rebuilds_a_one_plus_two_cluster(
    vcsim: VcsimHandle, tmp_path: Path, arm: ArmDouble, arm_env: dict[str, str]
) -> None:
    path, vms = deployed(vcsim, tmp_path, "r1")
    assert run_cli(vcsim, "rotate", str(path), "--yes").exit_code == 0  # the fleet is at generation 2
    with playing(vcsim, load_fleet(path)) as player:
        result = run_cli(vcsim, *rebuild(path), **arm_env)
    assert result.exit_code == 0, result.output
    assert "fleet demo: 3 VM(s) rolled onto DC0_H0_VM1" in result.stdout
    assert sources(vcsim, vms) == {n: ("DC0_H0_VM1", "poweredOn", 1) for n in vms}
    # The single server went first; its stale Arc resource was deleted before the replacement booted.
    replaced = [r for r in player.reported if r.endswith(".rollout")]
    assert replaced == ["r1-01.rollout", "r1-02.rollout", "r1-03.rollout"]
    assert arm.resource(DEMO_ARC_ID) is None
    # The replacements carry the generation the fleet is at, not deploy's 1.
    for name in vms:
        extra = vm_extra(vcsim, name)
        assert extra[KEY_GENERATION] == "2"
        assert json.loads(cloudinit_decode(extra)["secrets"])["generation"] == 2
    # A second rollout onto the same template has nothing to do.
    again = run_cli(vcsim, "rollout", str(path), "--template", "DC0_H0_VM1", "--rebuild-cluster", "--yes")
    assert again.exit_code == 0 and "0 VM(s) rolled" in again.stdout
    assert again.stderr.count("current (already on DC0_H0_VM1)") == 3


def test_failed_replacement_leaves_the_old_vm_serving_and_a_rerun_resumes(
    vcsim: VcsimHandle, tmp_path: Path, arm_env: dict[str, str]
) -> None:
    path, vms = deployed(vcsim, tmp_path, "rf")
    args = rebuild(path)
    with playing(vcsim, load_fleet(path)) as player:
        player.fail.add("rf-02")
        failed = run_cli(vcsim, *args, **arm_env)
        assert failed.exit_code == 1
        assert "rf-02: the replacement failed at step k3s: node not Ready (played)" in failed.stderr
        assert "the old VM is powered on again" in failed.stderr
        state = sources(vcsim, vms)
        assert state["rf-01"] == ("DC0_H0_VM1", "poweredOn", 1)
        assert state["rf-02"] == ("DC0_H0_VM0", "poweredOn", 2)  # + rf-02.rollout, powered off
        assert vm_info(vcsim, "rf-02.rollout")["power"] == ["poweredOff"]
        assert state["rf-03"] == ("DC0_H0_VM0", "poweredOn", 1)

        player.fail.clear()
        resumed = run_cli(vcsim, *args, **arm_env)
    assert resumed.exit_code == 0, resumed.output
    assert "rf-01 (server, cluster rf-01): current" in resumed.stderr
    assert "deleting the failed replacement of an earlier run" in resumed.stderr
    assert sources(vcsim, vms) == {n: ("DC0_H0_VM1", "poweredOn", 1) for n in vms}


def test_rollout_waits_for_the_report_of_its_own_nodes_delete_request(
    vcsim: VcsimHandle, tmp_path: Path, arm_env: dict[str, str]
) -> None:
    path, vms = deployed(vcsim, tmp_path, "rq")
    fleet = load_fleet(path)
    agent = next(v.hostname for v in fleet.vms if v.name == "rq-02")
    with playing(vcsim, fleet) as player:
        # The server's status carries an earlier request's report for this very name, refreshed each
        # round, while its `firstboot rotate` does not act on the new request: that is no confirmation.
        player.last_delete["rq-01"] = NodesDeleteRequest(request_id="00000000", names=[agent])
        player.deaf.add("rq-01")
        args = ("rollout", str(path), "--template", "DC0_H0_VM1", "--rebuild-cluster", "--yes")
        result = run_cli(vcsim, *args, "--timeout", "4", "--interval", "0.05", **arm_env)
    assert result.exit_code == 1, result.output
    assert f"server rq-01 did not report node {agent} deleted within 4s" in result.stderr
    assert "rq-02.rollout was not started" in result.stderr
    # The request is still pending on the server (not removed on the strength of the old report).
    request = NodesDeleteRequest.parse(vm_extra(vcsim, "rq-01")[KEY_NODES_DELETE])
    assert request.names == [agent] and request.request_id != "00000000"
    assert sources(vcsim, vms)["rq-02"] == ("DC0_H0_VM0", "poweredOn", 2)


def test_a_replacement_cut_off_before_its_network_metadata_is_cloned_again(
    vcsim: VcsimHandle, tmp_path: Path, arm_env: dict[str, str]
) -> None:
    path, vms = deployed(vcsim, tmp_path, "rh")
    fleet = load_fleet(path)
    with session_for(vcsim) as s:
        # What a rollout leaves when vCenter goes away between the clone and its guestinfo.metadata.
        where = inventory.placement_of(s, fleet.placement)
        source = inventory.vm(s, where.datacenter, "DC0_H0_VM1")
        vmops.clone(source, "rh-02.rollout", where, fleet_marks(fleet.name, "DC0_H0_VM1", ""))
    with playing(vcsim, fleet):
        result = run_cli(vcsim, *rebuild(path), **arm_env)
    assert result.exit_code == 0, result.output
    assert "rh-02: deleting the half-made replacement of an earlier run" in result.stderr
    assert sources(vcsim, vms) == {n: ("DC0_H0_VM1", "poweredOn", 1) for n in vms}
    # Each replacement's network binds to the MAC the simulator gave it, as deploy's clones do.
    macs = vm_macs(vcsim)
    for name in vms:
        nic = cloudinit_decode(vm_extra(vcsim, name))["metadata"]["network"]["config"]["ethernets"]["ens192"]
        assert [nic["match"]["macaddress"]] == macs[name]


def test_interrupted_rollout_resumes(vcsim: VcsimHandle, tmp_path: Path, arm_env: dict[str, str]) -> None:
    path, vms = deployed(vcsim, tmp_path, "ri")
    fleet = load_fleet(path)

    def interrupt(line: str) -> None:
        # Ctrl-C while the agent's replacement runs beside its powered-off predecessor.
        if line.startswith("ri-02: ri-02.rollout powered on"):
            raise KeyboardInterrupt

    with playing(vcsim, fleet):
        with session_for(vcsim) as s:
            plan = ro.plan(s, fleet, "DC0_H0_VM1", rebuild_cluster=True)
            with pytest.raises(KeyboardInterrupt):
                ro.run(s, fleet, plan, {**SECRET_ENV, **arm_env}, ro.Options(True, 60, 0.05, interrupt))
        middle = sources(vcsim, vms)
        assert middle["ri-01"][0] == "DC0_H0_VM1" and middle["ri-02"][2] == 2
        resumed = run_cli(vcsim, *rebuild(path), **arm_env)
    assert resumed.exit_code == 0, resumed.output
    assert (
        "ri-02 (agent, cluster ri-01): replace from (old VM already deleted) (resuming)" not in resumed.stderr
    )
    assert "ri-02 (agent, cluster ri-01): replace from DC0_H0_VM0 (resuming)" in resumed.stderr
    assert sources(vcsim, vms) == {n: ("DC0_H0_VM1", "poweredOn", 1) for n in vms}


def test_rollout_of_a_three_plus_two_cluster_keeps_quorum_and_resumes(
    vcsim: VcsimHandle, tmp_path: Path
) -> None:
    path = fleet_file(tmp_path, "h3", source="ha-fleet")
    assert run_cli(vcsim, "deploy", str(path)).exit_code == 0
    vms = [f"h3-0{n}" for n in range(1, 6)]
    args = ("rollout", str(path), "--template", "DC0_H0_VM1", "--yes", *FAST)
    with playing(vcsim, load_fleet(path)) as player:
        # h3-03 is not Ready: taking h3-02 down would leave 1 of 3 etcd members; the rollout stops there.
        player.not_ready.add("h3-03")
        stopped = run_cli(vcsim, *args)
        assert stopped.exit_code == 1
        assert "h3-02: not taken down to keep the etcd quorum: servers h3-03 are not reported Ready" in (
            stopped.stderr
        )
        state = sources(vcsim, vms)
        assert [state[n][0] for n in vms] == ["DC0_H0_VM0"] * 3 + ["DC0_H0_VM1"] * 2  # agents went first
        assert state["h3-02"][1] == "poweredOn"

        player.not_ready.clear()
        # As an operator would: resume once the server reports h3-03 Ready (the rollout checks the
        # quorum on the server's last report, which lags the change by a round of the player).
        reported_ready(vcsim, "h3-01", "h3-03")
        resumed = run_cli(vcsim, *args)
    assert resumed.exit_code == 0, resumed.output
    assert "fleet ha: 3 VM(s) rolled onto DC0_H0_VM1" in resumed.stdout
    # Every replacement joined under its old node name, which the player's K3s node-password rule
    # (doubles.k3s_rules.admit_node) refuses while the old Node exists: a server deleted each first, the
    # initialising server's own through a joining server.
    said = stopped.stderr + resumed.stderr
    for name in ("h3-04", "h3-05", "h3-02", "h3-03"):
        assert f"{name}: waiting for server h3-01 to delete node {name}" in said
    assert "h3-01: waiting for server h3-02 to delete node h3-01" in said
    assert "Node password rejected" not in said
    replaced = [r.removesuffix(".rollout") for r in player.reported if r.endswith(".rollout")]
    assert replaced == ["h3-04", "h3-05", "h3-02", "h3-03", "h3-01"]
    assert sources(vcsim, vms) == {n: ("DC0_H0_VM1", "poweredOn", 1) for n in vms}
    # The initialising server's replacement joined a surviving server (the player's K3s double refuses a
    # `cluster-init` start beside live etcd members: a second cluster) and kept the cluster's Arc.
    first = json.loads(cloudinit_decode(vm_extra(vcsim, "h3-01"))["config"])
    assert first["k3s"]["cluster_init"] is False
    assert first["k3s"]["server_url"] == "https://192.168.60.12:6443"  # h3-02
    assert first["arc"] is not None and OnboardingConfig.model_validate(first).onboards_cluster
    assert "split brain" not in said
