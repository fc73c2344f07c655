"""Round-trip budgets of `builder status` and deploy's plan, counted at pyVmomi's SOAP stub on the simulator.

The reads must not grow with the fleet: status reads the datacenter, the names of its VMs and then
name, extraConfig and power state of every fleet VM in one PropertyCollector query; deploy reads the
template once and every existing fleet VM in one query ("already deployed?").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures.vcsim import VcsimHandle

from builder import status as st
from builder.deploy import deploy
from builder.fleet import load_fleet
from builder.vsphere import inventory, rawprops
from builder.vsphere import vm as vmops
from builder.vsphere.connection import NotFoundError
from builder.vsphere.roundtrips import RoundTrips, counting
from integration.vsphere_helpers import SECRET_ENV, fleet_file, session_for, set_extra

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

STATUS_BUDGET = 5
PER_CLONE_BUDGET = 10


def _status_trips(sim: VcsimHandle, fleet_path: Path) -> tuple[RoundTrips, list[st.VmStatus]]:
    fleet = load_fleet(fleet_path)
    with session_for(sim) as session, counting() as trips:
        rows = st.read_status(session, fleet)
    return trips, rows


def _deploy_trips(sim: VcsimHandle, fleet_path: Path) -> RoundTrips:
    fleet = load_fleet(fleet_path)
    with session_for(sim) as session, counting() as trips:
        report = deploy(fleet, session, SECRET_ENV, concurrency=2)
    assert report.ok, report.as_dict()
    return trips


def test_status_round_trips_do_not_grow_with_the_fleet(vcsim: VcsimHandle, tmp_path: Path) -> None:
    small = fleet_file(tmp_path, "rt-s", agents=2)
    (tmp_path / "l").mkdir()
    large = fleet_file(tmp_path / "l", "rt-l", agents=9)
    _deploy_trips(vcsim, small)
    _deploy_trips(vcsim, large)

    few, few_rows = _status_trips(vcsim, small)
    many, many_rows = _status_trips(vcsim, large)
    assert len(few_rows) == 3 and len(many_rows) == 10
    assert all(r.state == st.NO_REPORT and r.power == "poweredOn" for r in few_rows + many_rows)
    assert many.total <= STATUS_BUDGET, str(many)
    assert many.by_method == few.by_method, f"{few} vs {many}"
    assert many.by_method["RetrievePropertiesEx"] == 2  # the datacenter's names, the fleet's properties


def test_status_reports_missing_vms_without_extra_trips(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "rt-none", agents=2)
    trips, rows = _status_trips(vcsim, fleet)
    assert [r.state for r in rows] == [st.MISSING] * 3
    assert trips.total <= STATUS_BUDGET, str(trips)


def test_deploy_reads_the_template_once_and_plans_in_one_query(vcsim: VcsimHandle, tmp_path: Path) -> None:
    small = fleet_file(tmp_path, "rt-ds", agents=2)
    (tmp_path / "l").mkdir()
    large = fleet_file(tmp_path / "l", "rt-dl", agents=6)
    first_small = _deploy_trips(vcsim, small)
    first_large = _deploy_trips(vcsim, large)
    # Reads other than the per-clone ones are the same for 3 and 7 clones: the template's name and
    # devices are read once, not per clone. Per clone: one read of its devices (the MAC vCenter gave it,
    # for its network metadata) and the read-back of its identity stamp.
    for method in ("RetrievePropertiesEx", "Fetch name", "Fetch config", "Fetch runtime"):
        per_clone = {"RetrievePropertiesEx": 1, "Fetch config": 1}.get(method, 0)
        expected = first_small.by_method[method] + 4 * per_clone
        assert first_large.by_method[method] == expected, f"{method}: {first_small} vs {first_large}"
    # Each clone: clone, MAC read, metadata reconfigure, power-on, identity reconfigure and read-back, and
    # one poll of each of its 4 tasks (the simulator finishes a task before answering).
    assert first_large.total - first_small.total == 4 * PER_CLONE_BUDGET, f"{first_small} vs {first_large}"

    again_small = _deploy_trips(vcsim, small)
    again_large = _deploy_trips(vcsim, large)
    assert again_large.by_method == again_small.by_method, f"{again_small} vs {again_large}"
    assert "Fetch config" not in again_large.by_method


def test_a_vm_deleted_between_the_two_queries_reads_as_missing(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet_path = fleet_file(tmp_path, "rt-gone", agents=2)
    _deploy_trips(vcsim, fleet_path)
    names = ["rt-gone-01", "rt-gone-02", "rt-gone-03"]
    with session_for(vcsim) as session:
        by_name = inventory.vms_by_name(session, inventory.datacenter(session, "DC0"), names)
        vmops.destroy(by_name["rt-gone-02"][0], "rt-gone-02")
        rows = vmops.read_rows(session, by_name, names)
    assert sorted(rows) == ["rt-gone-01", "rt-gone-03"]
    assert all(r.power == "poweredOn" and r.extra for found in rows.values() for r in found)


# What `builder status` must not import: the image side (Jinja2, the renderer, the validators, JUnit, the
# Packer driver), deploy and the Day 2 commands.
NOT_FOR_STATUS = (
    "jinja2",
    "builder.render",
    "builder.render_context",
    "builder.validators",
    "builder.junit",
    "builder.packer",
    "builder.build",
    "builder.commands_image",
    "builder.commands_day2",
    "builder.deploy",
    "builder.azure_arm",
    "pyVim",
)


def _whole_command(sim: VcsimHandle, *args: str) -> dict[str, Any]:
    """`builder ARGS` in a fresh process under the round-trip counter: its exit code, round trips, modules."""
    out = subprocess.run(
        [sys.executable, "-m", "builder.vsphere.roundtrips", *args],
        env={**os.environ, **sim.env(), "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result: dict[str, Any] = json.loads(out.stderr.strip().splitlines()[-1])
    result["stdout"] = out.stdout
    return result


def test_the_whole_status_command_is_five_round_trips(vcsim: VcsimHandle, tmp_path: Path) -> None:
    # Login and logout included: RetrieveServiceContent once (the simulator check reads its `about`),
    # Login, the datacenter with its VM names, the fleet's properties, Logout.
    small = fleet_file(tmp_path, "rt-cs", agents=2)
    (tmp_path / "l").mkdir()
    large = fleet_file(tmp_path / "l", "rt-cl", agents=9)
    _deploy_trips(vcsim, small)
    _deploy_trips(vcsim, large)
    whole = {"RetrieveServiceContent": 1, "Login": 1, "RetrievePropertiesEx": 2, "Logout": 1}
    for path, size in ((small, 3), (large, 10)):
        result = _whole_command(vcsim, "status", str(path), "--format", "json")
        assert result["code"] == 0, result
        doc = json.loads(result["stdout"])
        assert doc["simulator"] is True and len(doc["vms"]) == size
        assert result["round_trips"] == whole
        assert sum(result["round_trips"].values()) <= STATUS_BUDGET


def test_status_loads_no_image_module(vcsim: VcsimHandle, tmp_path: Path) -> None:
    result = _whole_command(vcsim, "status", str(fleet_file(tmp_path, "rt-mods", agents=2)))
    assert result["code"] == 1  # the fleet is not deployed: every VM is missing
    loaded = set(result["modules"])
    assert {"builder.status", "builder.commands_vsphere", "pyVmomi"} <= loaded
    assert not [m for m in loaded if m in NOT_FOR_STATUS or m.split(".")[0] in NOT_FOR_STATUS]


def test_the_raw_read_gives_what_pyvmomi_decodes(vcsim: VcsimHandle, tmp_path: Path) -> None:
    # rawprops reads the answer itself; every key and value must be what pyVmomi's decoder makes of it,
    # text with markup, entities, non-ASCII and spaces included, the last of a duplicated key too.
    fleet_path = fleet_file(tmp_path, "rt-raw", agents=2)
    _deploy_trips(vcsim, fleet_path)
    odd = "  <b>&amp; \u00e9\u4e2d \"q\" 'a'\t</b>  "
    set_extra(vcsim, "rt-raw-02", {"guestinfo.arcbake.status": odd, "guestinfo.other": "x"})
    set_extra(vcsim, "rt-raw-02", {"guestinfo.arcbake.status": odd + "2"})
    names = ["rt-raw-01", "rt-raw-02", "rt-raw-03", "DC0_H0_VM0"]
    with session_for(vcsim) as session:
        _, by_name = inventory.datacenter_and_vms(session, "DC0", names)
        decoded = vmops.read_rows(session, by_name, names, st.STATUS_PROPS)
        keys = {k for rows in decoded.values() for r in rows for k in r.extra}
        assert len(keys) > 10 and "guestinfo.other" in keys
        with counting() as trips:
            raw = vmops.read_rows(session, by_name, names, st.STATUS_PROPS, keys)
    assert trips.by_method == {"RetrievePropertiesEx": 1}  # read raw, not asked again through pyVmomi
    assert raw == decoded
    assert raw["rt-raw-02"][0].extra["guestinfo.arcbake.status"] == odd + "2"
    assert raw["DC0_H0_VM0"][0].is_template is False
    with session_for(vcsim) as session:
        only = vmops.read_rows(session, by_name, names, st.STATUS_PROPS, st.STATUS_KEYS)
    full = decoded["rt-raw-02"][0].extra
    assert only["rt-raw-02"][0].extra == {k: v for k, v in full.items() if k in st.STATUS_KEYS}
    assert set(only["rt-raw-02"][0].extra) == {
        "guestinfo.arcbake.status",
        "guestinfo.arcbake.secrets",
        "guestinfo.arcbake.secrets.encoding",
    }


def test_one_traversal_finds_vms_in_nested_folders_of_the_named_datacenter_only(
    fresh_vcsim: VcsimHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One of DC0's VMs moved two folders down; a second datacenter inside a datacenter folder (the
    # traversal enters datacenter folders, and a VM is looked for in its own datacenter only).
    with session_for(fresh_vcsim) as session:
        root = session.content.rootFolder
        dc0 = inventory.datacenter(session, "DC0")
        deep = dc0.vmFolder.CreateFolder("a").CreateFolder("b")
        vm0, vm1 = inventory.vm(session, dc0, "DC0_H0_VM0"), inventory.vm(session, dc0, "DC0_H0_VM1")
        vmops.wait(deep.MoveIntoFolder_Task([vm0]), "moving a VM")
        other = root.CreateFolder("sites").CreateDatacenter("DC9")
        other.vmFolder.CreateFolder("x")
        names = ["DC0_H0_VM0", "DC0_H0_VM1", "no-such-vm"]
        with counting() as trips:
            dc, found = inventory.datacenter_and_vms(session, "DC0", names)
        assert trips.by_method == {"RetrievePropertiesEx": 1}
        assert dc == dc0 and found == {"DC0_H0_VM0": [vm0], "DC0_H0_VM1": [vm1]}
        assert inventory.datacenter_and_vms(session, "DC9", names) == (other, {})
        with pytest.raises(NotFoundError, match="datacenter 'DC8' not found"):
            inventory.datacenter_and_vms(session, "DC8", names)

        # An answer rawprops does not decode is read again through pyVmomi, with the same result.
        def refuse(*args: Any) -> Any:
            raise rawprops.Unsupported("test")

        monkeypatch.setattr(rawprops, "_call", refuse)
        assert inventory.datacenter_and_vms(session, "DC0", names) == (dc0, found)
        rows = vmops.read_rows(session, found, names, st.STATUS_PROPS, st.STATUS_KEYS)
        assert sorted(rows) == ["DC0_H0_VM0", "DC0_H0_VM1"] and rows["DC0_H0_VM0"][0].power == "poweredOn"
