"""builder destroy against the vCenter simulator (and the ARM double for the Arc side)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from doubles.arm_double import ArmDouble, Fault
from fixtures.vcsim import VcsimHandle

from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from integration.vsphere_helpers import (
    DEMO_ARC_ID,
    SECRET_ENV,
    deployed,
    run_cli,
    session_for,
    vm_info,
)

pytestmark = pytest.mark.integration


def test_destroy_keep_arc_deletes_vms_and_is_idempotent(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet, vms = deployed(vcsim, tmp_path, "dk")
    partial = run_cli(
        vcsim, "destroy", str(fleet), "--vm", "dk-03", "--keep-arc", "--yes", "--format", "json"
    )
    assert partial.exit_code == 0, partial.output
    report = json.loads(partial.stdout)
    assert [(v["name"], v["done"]) for v in report["vms"]] == [("dk-03", "deleted")]
    assert report["arc"][0]["action"] == "keep" and "dk-01, dk-02" in report["arc"][0]["reason"]
    assert [vm_info(vcsim, n)["count"] for n in vms] == [1, 1, 0]

    rest = run_cli(vcsim, "destroy", str(fleet), "--keep-arc", "--yes")
    assert rest.exit_code == 0, rest.output
    assert "Arc rg-edge-demo/edge-demo: keep-arc" in rest.output
    assert "the Arc resources in Azure are left alone" in rest.stderr
    assert [vm_info(vcsim, n)["count"] for n in vms] == [0, 0, 0]
    # The template the fleet cloned from is untouched.
    assert vm_info(vcsim, "DC0_H0_VM0")["count"] == 1

    again = run_cli(vcsim, "destroy", str(fleet), "--keep-arc", "--yes", "--format", "json")
    assert again.exit_code == 0, again.output
    assert {v["done"] for v in json.loads(again.stdout)["vms"]} == {"absent"}


def test_destroy_refuses_foreign_vm_and_template_changing_nothing(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet, vms = deployed(vcsim, tmp_path, "dr")
    with session_for(vcsim) as s:
        dc = inventory.datacenter(s, "DC0")
        where = inventory.placement(s, datacenter_name="DC0", cluster_name="DC0_C0")
        source = inventory.vm(s, dc, "DC0_H0_VM1")
        # Same name as a fleet VM, but a template; and another fleet's VM of the fleet's name.
        vmops.clone(source, "dr-02", where, {}, template=True)
        vmops.set_extra_config(inventory.vm(s, dc, "dr-03"), {"arcbake.fleet": "someone-else"}, "re-marking")
    result = run_cli(vcsim, "destroy", str(fleet), "--keep-arc", "--yes")
    assert result.exit_code == 1
    assert "VM 'dr-02' is a template: destroy never deletes a template" in result.stderr
    assert "VM 'dr-03' not deployed by this fleet (belongs to fleet 'someone-else')" in result.stderr
    assert "nothing was changed" in result.stderr
    assert [vm_info(vcsim, n)["count"] for n in vms] == [1, 2, 1]


def test_destroy_usage_and_missing_azure_credentials(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet, vms = deployed(vcsim, tmp_path, "du")
    unknown = run_cli(vcsim, "destroy", str(fleet), "--vm", "nope", "--yes")
    assert unknown.exit_code == 2 and "not a VM of fleet 'demo': nope" in unknown.stderr
    no_yes = run_cli(vcsim, "destroy", str(fleet), "--keep-arc")
    assert no_yes.exit_code == 2 and "pass --yes" in no_yes.stderr
    # The Arc side needs the service principal: it is checked before any VM is touched.
    no_sp = run_cli(vcsim, "destroy", str(fleet), "--yes")
    assert no_sp.exit_code == 1
    assert "set AZURE_CLIENT_ID, AZURE_CLIENT_SECRET in the environment" in no_sp.stderr
    assert [vm_info(vcsim, n)["count"] for n in vms] == [1, 1, 1]


def test_destroy_deletes_vms_then_the_emptied_clusters_arc_resource(
    vcsim: VcsimHandle, tmp_path: Path, arm: ArmDouble, arm_env: dict[str, str]
) -> None:
    fleet, vms = deployed(vcsim, tmp_path, "da")
    # Throttling and a 5xx on the way are retried by the SDK.
    arm.config.faults += [
        Fault(match="DELETE /subscriptions", status=429, retry_after=1),
        Fault(match="GET /subscriptions", status=503),
    ]
    one = run_cli(vcsim, "destroy", str(fleet), "--vm", "da-02", "--yes", **arm_env)
    assert one.exit_code == 0, one.output
    assert arm.resource(DEMO_ARC_ID) is not None, "the cluster still has VMs: its Arc resource stays"
    assert not [r for r in arm.requests(arm_only=True) if r.method == "DELETE"]

    rest = run_cli(vcsim, "destroy", str(fleet), "--yes", "--format", "json", **arm_env)
    assert rest.exit_code == 0, rest.output
    report = json.loads(rest.stdout)
    assert [(v["name"], v["done"]) for v in report["vms"]] == [
        ("da-01", "deleted"),
        ("da-02", "absent"),
        ("da-03", "deleted"),
    ]
    assert report["arc"] == [
        {
            "cluster": "da-01",
            "resource": "rg-edge-demo/edge-demo",
            "action": "delete",
            "reason": "no VM of cluster da-01 is left",
            "done": "deleted",
        }
    ]
    assert arm.resource(DEMO_ARC_ID) is None
    assert [vm_info(vcsim, n)["count"] for n in vms] == [0, 0, 0]
    deletes = [r for r in arm.requests(arm_only=True) if r.method == "DELETE"]
    assert [r.status for r in deletes] == [429, 202]
    assert (
        SECRET_ENV["ARC_SP_SECRET"] not in rest.output and arm_env["AZURE_CLIENT_SECRET"] not in rest.output
    )

    before = len(arm.requests())
    again = run_cli(vcsim, "destroy", str(fleet), "--yes", "--format", "json", **arm_env)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["arc"][0]["done"] == "absent"
    assert not [r for r in arm.requests()[before:] if r.method == "DELETE"], (
        "a second destroy changed nothing"
    )


def test_destroy_tolerates_404_on_delete(
    vcsim: VcsimHandle, tmp_path: Path, arm: ArmDouble, arm_env: dict[str, str]
) -> None:
    fleet, _vms = deployed(vcsim, tmp_path, "dn")
    # Deleted by someone else between our read and our delete.
    arm.config.faults.append(Fault(match="DELETE /subscriptions", status=404))
    result = run_cli(vcsim, "destroy", str(fleet), "--yes", **arm_env)
    assert result.exit_code == 0, result.output
    assert "Arc rg-edge-demo/edge-demo: absent" in result.stderr


def test_destroy_with_rejected_service_principal_keeps_the_arc_resource(
    vcsim: VcsimHandle, tmp_path: Path, arm: ArmDouble, arm_env: dict[str, str]
) -> None:
    fleet, _vms = deployed(vcsim, tmp_path, "dw")
    result = run_cli(vcsim, "destroy", str(fleet), "--yes", **{**arm_env, "AZURE_CLIENT_SECRET": "wrong-one"})
    assert result.exit_code == 1
    assert "AADSTS7000215" in result.stderr and "wrong-one" not in result.output
    assert arm.resource(DEMO_ARC_ID) is not None
