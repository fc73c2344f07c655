"""A vsphere-clone build over SSH: the build key reaches the clone through guestinfo (cloud-init reads it),
Packer 1.6.6 validates the build dir, and builder blanks the key in the VM before it becomes the template."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures.vcsim import VcsimHandle

from builder import build as build_mod
from builder.guestinfo import BUILD_ACCESS_KEYS, BUILD_SUDOERS
from builder.render import render
from builder.spec import SpecError, load_spec
from builder.validators import Status, run_validators
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from integration.vsphere_helpers import REPO, cloudinit_decode, session_for, vm_extra

pytestmark = pytest.mark.integration

ROCKY9 = (REPO / "examples/rocky9.yaml").read_text()
KEY = re.search(r"^  ssh_public_key: (.+)$", ROCKY9, re.M).group(1)  # type: ignore[union-attr]


def clone_spec(tmp_path: Path, *, key: bool = True, publish: str = "") -> Path:
    """examples/rocky9.yaml built from a clone of DC0_H0_VM0 over SSH."""
    text = re.sub(r"^source:\n(  .*\n)+", "source:\n  clone: {template: DC0_H0_VM0}\n", ROCKY9, flags=re.M)
    if not key:
        text = text.replace(f"  ssh_public_key: {KEY}\n", "")
    if publish:
        text = re.sub(r"^publish:\n(  .*\n)+", publish, text, flags=re.M)
    path = tmp_path / "clone.yaml"
    path.write_text(text)
    return path


@pytest.mark.allow_subp("packer")
def test_clone_build_puts_the_key_into_the_clone_through_guestinfo(tmp_path: Path) -> None:
    out = tmp_path / "build"
    render(load_spec(clone_spec(tmp_path)), out)
    pkrvars = yaml.safe_load((out / "packer/arcbake.auto.pkrvars.json").read_text())
    params = pkrvars["configuration_parameters"]
    assert set(BUILD_ACCESS_KEYS) <= set(params)
    # Packer converts nothing itself: builder blanks the keys first (test below), then converts.
    assert pkrvars["convert_to_template"] is False
    # Read the way the clone's cloud-init reads it (its VMware datasource's own decoder).
    decoded = cloudinit_decode(params)
    assert decoded["metadata"]["instance-id"].startswith("iid-arcbake-build-")
    userdata = decoded["userdata"]
    cloud_config = yaml.safe_load(userdata)
    assert cloud_config["users"][0]["name"] == "arcbake"
    assert cloud_config["users"][0]["ssh_authorized_keys"] == [KEY]
    assert cloud_config["write_files"][0]["path"] == BUILD_SUDOERS
    # cloud-init's own schema check of the user-data.
    ud = tmp_path / "user-data"
    ud.write_text(userdata)
    tool = shutil.which("cloud-init")
    assert tool, "cloud-init is installed by tools/dev.sh"
    checked = subprocess.run(
        [tool, "schema", "--config-file", str(ud)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Packer (1.6.6 here) accepts the build dir with these configuration_parameters.
    outcomes = {o.name: o for o in run_validators(out, only=["packer"])}
    assert outcomes["packer"].status is Status.PASSED, outcomes["packer"].message


@pytest.mark.parametrize(
    ("key", "publish", "fragment"),
    [
        (False, "", "communicator ssh needs build.ssh_public_key (cloud-init user-data through guestinfo)"),
        (True, "publish:\n  content_library: {name: lib1}\n", "cannot publish to a content library"),
    ],
)
def test_clone_build_refusals(tmp_path: Path, key: bool, publish: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(clone_spec(tmp_path, key=key, publish=publish))
    assert fragment in str(info.value)


def test_builder_blanks_the_build_key_then_converts(fresh_vcsim: VcsimHandle, tmp_path: Path) -> None:
    spec = load_spec(clone_spec(tmp_path))
    name = "DC0_H0_VM1"
    with session_for(fresh_vcsim) as session:
        dc = inventory.datacenter(session, "DC0")
        vm = inventory.vm(session, dc, name)
        # What Packer leaves: the powered-off build VM with the build's guestinfo.
        vmops.set_extra_config(vm, {k: "planted" for k in BUILD_ACCESS_KEYS}, "planting")
        vmops.power_off(vm, name)
        build_mod._forget_build_access(session, dc, spec, name)
        assert inventory.vm(session, dc, name).config.template is True
    extra = vm_extra(fresh_vcsim, name)
    assert not set(BUILD_ACCESS_KEYS) & set(extra), extra
