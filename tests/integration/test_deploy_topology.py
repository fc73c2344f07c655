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


def record_profile(sim: VcsimHandle, template: str, profile: str) -> None:
    """What `builder build` leaves on a template (render_context.LINEAGE_KEYS)."""
    with session_for(sim) as s:
        vm = inventory.vm(s, inventory.datacenter(s, "DC0"), template)
        vmops.set_extra_config(vm, {topology.PROFILE_KEY: profile}, "recording the profile")


def test_agents_against_a_single_node_template_are_refused(fresh_vcsim: VcsimHandle, tmp_path: Path) -> None:
    record_profile(fresh_vcsim, "DC0_H0_VM1", "single-node")
    fleet = fleet_file(tmp_path, "topo", template="DC0_H0_VM1")
    env = {**fresh_vcsim.env(), **SECRET_ENV}
    result = CliRunner().invoke(cli, ["deploy", str(fleet)], env=env)
    assert result.exit_code == 3, result.output
    assert "needs firewall profile 'multi-node'" in result.stderr
    assert "template 'DC0_H0_VM1' was built with 'single-node'" in result.stderr
    assert vm_info(fresh_vcsim, "topo-01")["count"] == 0  # nothing cloned

    record_profile(fresh_vcsim, "DC0_H0_VM1", "multi-node")
    assert CliRunner().invoke(cli, ["deploy", str(fleet)], env=env).exit_code == 0
