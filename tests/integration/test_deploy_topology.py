"""deploy refuses a fleet whose clusters the template's recorded firewall profile cannot carry."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.vcsim import VcsimHandle

from builder import topology
from builder.cli import cli
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from integration.vsphere_helpers import SECRET_ENV, fleet_file, session_for, vm_info

pytestmark = pytest.mark.integration


def record(sim: VcsimHandle, template: str, key: str, value: str) -> None:
    """What `builder build` leaves on a template (render_context.LINEAGE_KEYS)."""
    with session_for(sim) as s:
        vm = inventory.vm(s, inventory.datacenter(s, "DC0"), template)
        vmops.set_extra_config(vm, {key: value}, f"recording {key}")


def test_agents_against_a_single_node_template_are_refused(fresh_vcsim: VcsimHandle, tmp_path: Path) -> None:
    record(fresh_vcsim, "DC0_H0_VM1", topology.PROFILE_KEY, "single-node")
    fleet = fleet_file(tmp_path, "topo", template="DC0_H0_VM1")
    env = {**fresh_vcsim.env(), **SECRET_ENV}
    result = CliRunner().invoke(cli, ["deploy", str(fleet)], env=env)
    assert result.exit_code == 3, result.output
    assert "needs firewall profile 'multi-node'" in result.stderr
    assert "template 'DC0_H0_VM1' was built with 'single-node'" in result.stderr
    assert vm_info(fresh_vcsim, "topo-01")["count"] == 0  # nothing cloned

    record(fresh_vcsim, "DC0_H0_VM1", topology.PROFILE_KEY, "multi-node")
    # A template whose firewall trusts other K3s ranges than the fleet's clones would use.
    record(fresh_vcsim, "DC0_H0_VM1", topology.NETWORK_KEY, "10.52.0.0/16 10.53.0.0/16 10.53.0.10")
    result = CliRunner().invoke(cli, ["deploy", str(fleet)], env=env)
    assert result.exit_code == 3, result.output
    assert "VM 'topo-01' runs K3s with 10.42.0.0/16 10.43.0.0/16 10.43.0.10" in result.stderr
    assert "trusts 10.52.0.0/16 10.53.0.0/16 10.53.0.10 in its firewall" in result.stderr
    assert vm_info(fresh_vcsim, "topo-01")["count"] == 0

    record(fresh_vcsim, "DC0_H0_VM1", topology.NETWORK_KEY, "10.42.0.0/16 10.43.0.0/16 10.43.0.10")
    assert CliRunner().invoke(cli, ["deploy", str(fleet)], env=env).exit_code == 0
