"""builder destroy against the vCenter simulator (and the ARM double for the Arc side)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fixtures.vcsim import VcsimHandle

from builder.cli import cli
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from integration.vsphere_helpers import SECRET_ENV, fleet_file, session_for, vm_info

pytestmark = pytest.mark.integration


def run_cli(sim: VcsimHandle, *args: str, **env: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={**sim.env(), **SECRET_ENV, **env}, catch_exceptions=False)


def names(prefix: str) -> list[str]:
    return [f"{prefix}-01", f"{prefix}-02", f"{prefix}-03"]


def test_destroy_keep_arc_deletes_vms_and_is_idempotent(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "dk")
    assert run_cli(vcsim, "deploy", str(fleet)).exit_code == 0
    partial = run_cli(
        vcsim, "destroy", str(fleet), "--vm", "dk-03", "--keep-arc", "--yes", "--format", "json"
    )
    assert partial.exit_code == 0, partial.output
    report = json.loads(partial.stdout)
    assert [(v["name"], v["done"]) for v in report["vms"]] == [("dk-03", "deleted")]
    assert report["arc"][0]["action"] == "keep" and "dk-01, dk-02" in report["arc"][0]["reason"]
    assert [vm_info(vcsim, n)["count"] for n in names("dk")] == [1, 1, 0]

    rest = run_cli(vcsim, "destroy", str(fleet), "--keep-arc", "--yes")
    assert rest.exit_code == 0, rest.output
    assert "Arc rg-edge-demo/edge-demo: keep-arc" in rest.output
    assert "the Arc resources in Azure are left alone" in rest.stderr
    assert [vm_info(vcsim, n)["count"] for n in names("dk")] == [0, 0, 0]
    # The template the fleet cloned from is untouched.
    assert vm_info(vcsim, "DC0_H0_VM0")["count"] == 1

    again = run_cli(vcsim, "destroy", str(fleet), "--keep-arc", "--yes", "--format", "json")
    assert again.exit_code == 0, again.output
    assert {v["done"] for v in json.loads(again.stdout)["vms"]} == {"absent"}


def test_destroy_refuses_foreign_vm_and_template_changing_nothing(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "dr")
    assert run_cli(vcsim, "deploy", str(fleet)).exit_code == 0
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
    assert [vm_info(vcsim, n)["count"] for n in names("dr")] == [1, 2, 1]


def test_destroy_usage_and_missing_azure_credentials(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "du")
    assert run_cli(vcsim, "deploy", str(fleet)).exit_code == 0
    unknown = run_cli(vcsim, "destroy", str(fleet), "--vm", "nope", "--yes")
    assert unknown.exit_code == 2 and "not a VM of fleet 'demo': nope" in unknown.stderr
    no_yes = run_cli(vcsim, "destroy", str(fleet), "--keep-arc")
    assert no_yes.exit_code == 2 and "pass --yes" in no_yes.stderr
    # The Arc side needs the service principal: it is checked before any VM is touched.
    no_sp = run_cli(vcsim, "destroy", str(fleet), "--yes")
    assert no_sp.exit_code == 1
    assert "set AZURE_CLIENT_ID, AZURE_CLIENT_SECRET in the environment" in no_sp.stderr
    assert [vm_info(vcsim, n)["count"] for n in names("du")] == [1, 1, 1]
