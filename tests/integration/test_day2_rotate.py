"""builder rotate against the vCenter simulator: a newer generation of secrets in each clone's guestinfo,
decoded as cloud-init's VMware datasource decodes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.vcsim import VcsimHandle

from builder.rotate import KEY_GENERATION
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from firstboot.contract import KEY_STATUS, State, Status
from integration.vsphere_helpers import (
    SECRET_ENV,
    cloudinit_decode,
    deployed,
    run_cli,
    session_for,
    vm_extra,
)

pytestmark = pytest.mark.integration

NEW = {"ARC_SP_SECRET": "sp-Rotated-Secret-2b7d1", "K3S_TOKEN": SECRET_ENV["K3S_TOKEN"]}


def test_rotate_writes_a_newer_generation_into_every_clone(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet, vms = deployed(vcsim, tmp_path, "rot")
    result = run_cli(vcsim, "rotate", str(fleet), "--yes", "--format", "json", **NEW)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["generation"] == 2 and {v["done"] for v in report["vms"]} == {"written"}
    for name in vms:
        extra = vm_extra(vcsim, name)
        assert extra[KEY_GENERATION] == "2"
        secrets = json.loads(cloudinit_decode(extra)["secrets"])
        assert secrets["generation"] == 2
    server = json.loads(cloudinit_decode(vm_extra(vcsim, "rot-01"))["secrets"])
    assert server["sp_secret"] == NEW["ARC_SP_SECRET"]
    agent = json.loads(cloudinit_decode(vm_extra(vcsim, "rot-02"))["secrets"])
    assert "sp_secret" not in agent and agent["k3s_token"] == NEW["K3S_TOKEN"]
    # Values never reach the output, only generations and names.
    assert NEW["ARC_SP_SECRET"] not in result.output

    # A guest that reports a higher generation (taken from an earlier rotation) moves the next one past it.
    with session_for(vcsim) as s:
        obj = inventory.vm(s, inventory.datacenter(s, "DC0"), "rot-03")
        status = Status(state=State.DONE, message="onboarded", generation=5)
        vmops.set_extra_config(obj, {KEY_STATUS: status.to_json()}, "playing the guest")
    again = run_cli(vcsim, "rotate", str(fleet), "--yes", **NEW)
    assert again.exit_code == 0, again.output
    assert "secrets generation 6 written to 3 VM(s)" in again.stdout
    assert "rot-03: held 5, written 2 -> 6" in again.stderr


def test_rotate_needs_every_secret_and_changes_nothing_without(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet, vms = deployed(vcsim, tmp_path, "rou")
    result = run_cli(vcsim, "rotate", str(fleet), "--yes", ARC_SP_SECRET="")
    assert result.exit_code == 3
    assert "environment variable ARC_SP_SECRET is not set" in result.stderr
    assert KEY_GENERATION not in vm_extra(vcsim, vms[0])
