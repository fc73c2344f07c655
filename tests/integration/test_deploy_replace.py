"""`builder deploy --replace` on a live K3s cluster: only whole clusters are replaced.

A replacement is a new machine with no etcd data under the old node name. Beside members of its cluster
that keep running, the initialising server's replacement (`cluster-init`, no `server:`) would start a
second etcd cluster (k3s-io/k3s `pkg/etcd/etcd.go` `Start`, the rule the K3s double's `etcd_start`
enforces), and any replacement would be refused its node name, whose password the cluster holds for the
old machine (k3s-io/k3s `pkg/nodepassword`). So deploy refuses such a replacement before changing
anything and points at `builder rollout`; a whole cluster replaced together is a fresh cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures.guest_player import playing
from fixtures.vcsim import VcsimHandle

from builder.fleet import load_fleet
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from integration.vsphere_helpers import fleet_file, reported_ready, run_cli, session_for

pytestmark = pytest.mark.integration

# Per-VM or fleet-wide edits whose identity effect was checked against `FleetVM.identity`: `tags` reach
# only the Arc server's payload; a VM's own `time` only that VM's; the defaults' NTP every VM's.
INIT_SERVER_ONLY = {
    "  - name: {p}-01\n    role: server\n": "  - name: {p}-01\n    role: server\n    tags: {{rack: r1}}\n"
}
DHCP_AGENT_ONLY = {
    "network: {dhcp: true}": "network: {dhcp: true}\n    time: {ntp_servers: [time.example.org]}"
}
EVERY_VM = {"0.rocky.pool.ntp.org": "1.rocky.pool.ntp.org"}


def snapshot(sim: VcsimHandle) -> dict[str, list[tuple[str, str, list[tuple[str, str]]]]]:
    """Every VM and template of DC0: moid, power state and extraConfig (keys and values, in order)."""
    props = ["name", "runtime.powerState", "config.extraConfig"]
    out: dict[str, list[tuple[str, str, list[tuple[str, str]]]]] = {}
    with session_for(sim) as s:
        for obj, p in inventory.datacenter_vms(s, inventory.datacenter(s, "DC0"), props):
            extra = [(str(o.key), str(o.value)) for o in (p.get("config.extraConfig") or [])]
            out.setdefault(str(p["name"]), []).append((obj._moId, str(p.get("runtime.powerState")), extra))
    return out


def _subst(edit: dict[str, str], prefix: str) -> dict[str, str]:
    return {old.format(p=prefix): new.format(p=prefix) for old, new in edit.items()}


def _deploy(sim: VcsimHandle, path: Path, *args: str) -> Any:
    return run_cli(sim, "deploy", str(path), "--format", "json", *args)


def test_replacing_the_initialising_server_of_a_live_ha_cluster_is_refused(
    vcsim: VcsimHandle, tmp_path: Path
) -> None:
    first = _deploy(vcsim, fleet_file(tmp_path, "rpl-ha", source="ha-fleet"))
    assert first.exit_code == 0, first.output
    before = snapshot(vcsim)

    (tmp_path / "one").mkdir()
    changed = fleet_file(
        tmp_path / "one", "rpl-ha", source="ha-fleet", subst=_subst(INIT_SERVER_ONLY, "rpl-ha")
    )
    refused = _deploy(vcsim, changed, "--replace")
    assert refused.exit_code == 1, refused.output
    # One line (beside the simulator template's missing-firewall-profile warning).
    [line] = [x for x in refused.stderr.splitlines() if not x.startswith("WARNING ")]
    assert line.startswith(
        "error: cluster of rpl-ha-01: 3 servers + 2 agents: --replace would replace VM 'rpl-ha-01'"
    )
    assert (
        "while VMs 'rpl-ha-02', 'rpl-ha-03', 'rpl-ha-04', 'rpl-ha-05' of the same cluster keep running"
        in line
    )
    assert (
        "use `builder rollout --template DC0_H0_VM0`" in line and "all its VMs are replaced together" in line
    )
    assert line.endswith("nothing was changed")
    assert json.loads(refused.stdout) == {"ok": False, "error": line[7:], "exit_code": 1, "issues": []}
    assert snapshot(vcsim) == before  # no VM deleted, cloned, powered or reconfigured

    (tmp_path / "all").mkdir()
    whole = fleet_file(tmp_path / "all", "rpl-ha", source="ha-fleet", subst=EVERY_VM)
    # One at a time: the simulator (govmomi vcsim, Debian's build) panics in VirtualMachine.removeDevice
    # when several DestroyTasks run at once ("Remote end closed connection"); a real vCenter does not.
    replaced = _deploy(vcsim, whole, "--replace", "--concurrency", "1")
    assert replaced.exit_code == 0, replaced.output
    assert [v["action"] for v in json.loads(replaced.stdout)["vms"]] == ["replaced"] * 5
    after = snapshot(vcsim)
    for n in range(1, 6):
        [(moid, power, _extra)] = after[f"rpl-ha-{n:02d}"]
        assert power == "poweredOn" and moid != before[f"rpl-ha-{n:02d}"][0][0]


def test_replacing_an_agent_beside_its_running_server_points_at_rollout(
    vcsim: VcsimHandle, tmp_path: Path
) -> None:
    first = _deploy(vcsim, fleet_file(tmp_path, "rpl-ag"))
    assert first.exit_code == 0, first.output
    before = snapshot(vcsim)

    (tmp_path / "agent").mkdir()
    changed = fleet_file(tmp_path / "agent", "rpl-ag", subst=DHCP_AGENT_ONLY)
    refused = _deploy(vcsim, changed, "--replace")
    assert refused.exit_code == 1, refused.output
    assert "--replace would replace VM 'rpl-ag-03' while VMs 'rpl-ag-01', 'rpl-ag-02'" in refused.stderr
    assert "use `builder rollout --template DC0_H0_VM0`" in refused.stderr
    assert snapshot(vcsim) == before

    # A cluster none of whose other members exist: nothing runs beside the replacement, so it goes ahead.
    with session_for(vcsim) as s:
        dc = inventory.datacenter(s, "DC0")
        for name in ("rpl-ag-01", "rpl-ag-02"):
            vmops.destroy(inventory.vm(s, dc, name), name)
    result = _deploy(vcsim, changed, "--replace")
    assert result.exit_code == 0, result.output
    assert [v["action"] for v in json.loads(result.stdout)["vms"]] == ["cloned", "cloned", "replaced"]


def test_rollout_replaces_what_deploy_refused_keeping_the_cluster(vcsim: VcsimHandle, tmp_path: Path) -> None:
    """The way the refusal points: `builder rollout` onto the template the fleet is already on replaces
    the VMs whose configuration changed (here the initialising server alone), joining a survivor."""
    path = fleet_file(tmp_path, "rpl-ro", source="ha-fleet")
    assert _deploy(vcsim, path).exit_code == 0
    (tmp_path / "one").mkdir()
    changed = fleet_file(
        tmp_path / "one", "rpl-ro", source="ha-fleet", subst=_subst(INIT_SERVER_ONLY, "rpl-ro")
    )
    assert _deploy(vcsim, changed, "--replace").exit_code == 1
    before = snapshot(vcsim)

    dry = run_cli(vcsim, "rollout", str(changed), "--template", "DC0_H0_VM0", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "rpl-ro-01 (server, cluster rpl-ro-01): replace from DC0_H0_VM0 with another configuration" in (
        dry.stdout
    )
    assert dry.stdout.count("current (already on DC0_H0_VM0)") == 4
    args = (
        "rollout",
        str(changed),
        "--template",
        "DC0_H0_VM0",
        "--yes",
        "--timeout",
        "60",
        "--interval",
        "0.05",
    )
    with playing(vcsim, load_fleet(changed)) as player:
        for server in ("rpl-ro-02", "rpl-ro-03"):  # the quorum check reads the initialising server's report
            reported_ready(vcsim, "rpl-ro-01", server)
        rolled = run_cli(vcsim, *args)
    assert rolled.exit_code == 0, rolled.output
    # The player's K3s double refuses a second etcd cluster and a node name held for another password.
    assert [r for r in player.reported if r.endswith(".rollout")] == ["rpl-ro-01.rollout"]
    assert "rpl-ro-01: waiting for server rpl-ro-02 to delete node rpl-ro-01" in rolled.stderr
    after = snapshot(vcsim)
    assert [after[f"rpl-ro-0{n}"][0][0] for n in range(2, 6)] == [
        before[f"rpl-ro-0{n}"][0][0] for n in range(2, 6)
    ]
    assert after["rpl-ro-01"][0][0] != before["rpl-ro-01"][0][0]
    # deploy now finds the fleet as the changed file gives it.
    again = _deploy(vcsim, changed)
    assert again.exit_code == 0, again.output
    assert [v["action"] for v in json.loads(again.stdout)["vms"]] == ["unchanged"] * 5
