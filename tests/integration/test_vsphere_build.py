"""builder build against the real vCenter simulator and the real Packer 1.6.6."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fixtures.vcsim import VcsimHandle, start_vcsim

from builder.build import BuildOptions, build
from builder.deploy import deploy
from builder.fleet import load_fleet
from builder.vsphere import inventory
from builder.vsphere.connection import NotFoundError
from integration.vsphere_helpers import REPO, SECRET_ENV, builder_until, fleet_file, session_for

pytestmark = pytest.mark.integration

DEMO_IMAGE = REPO / "examples" / "demo-image.yaml"
BUILDER = str(Path(sys.executable).parent / "builder")


def templates(sim: VcsimHandle, prefix: str = "demo-rocky9-k3s-") -> dict[str, bool]:
    with session_for(sim) as s:
        dc = inventory.datacenter(s, "DC0")
        found = inventory.vms_by_name(s, dc)
        return {n: bool(v[0].config.template) for n, v in found.items() if n.startswith(prefix)}


@pytest.mark.slow
@pytest.mark.allow_subp("packer", "git")
def test_build_manifest_and_retention(fresh_vcsim: VcsimHandle, tmp_path: Path) -> None:
    env = {**os.environ, **fresh_vcsim.env()}
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    first = build(DEMO_IMAGE, env, BuildOptions(tmp_path / "b1", run_validators=False, now=t0, quiet=True))

    manifest = json.loads((tmp_path / "b1" / "manifest.json").read_text())
    assert manifest == first
    tpl = manifest["template"]
    assert tpl["name"] == "demo-rocky9-k3s-202601011200" and tpl["is_template"] is True
    with session_for(fresh_vcsim) as s:
        obj = inventory.vm(s, inventory.datacenter(s, "DC0"), tpl["name"])
        assert (obj._moId, obj.config.instanceUuid, obj.config.template) == (
            tpl["moid"],
            tpl["instance_uuid"],
            True,
        )
        extra = {o.key: o.value for o in obj.config.extraConfig}
        assert extra["guestinfo.arcbake.image"].startswith("rocky9 k3s=v1.31.4+k3s1")
    assert len(manifest["spec"]["sha256"]) == 64
    assert manifest["os"] == {"distro": "rocky", "major": 9, "variant": "rocky9"}
    assert manifest["k3s"]["version"] == "v1.31.4+k3s1" and len(manifest["k3s"]["sha256"]) == 3
    assert manifest["azure"]["cli_version"] == "2.67.0"
    assert manifest["azure"]["extensions"]["connectedk8s"] == "1.10.5"
    assert manifest["packer"]["version"] == "1.6.6"
    assert manifest["packer"]["artifacts"][0]["id"] == tpl["name"]
    assert manifest["spec"]["git"]["commit"] and len(manifest["spec"]["git"]["commit"]) == 40
    assert manifest["duration_seconds"] >= 0 and manifest["started"] <= manifest["ended"]
    log = (tmp_path / "b1" / "packer-build.log").read_text()
    assert "Convert VM into template" in log
    everything = "".join(p.read_text(errors="replace") for p in (tmp_path / "b1").rglob("*") if p.is_file())
    assert fresh_vcsim.password not in everything, "the vCenter password reached the build dir"

    # A clone deployed from the first template links it: retention (keep 2) must not delete it.
    fleet = load_fleet(fleet_file(tmp_path, "ret", template=tpl["name"]))
    with session_for(fresh_vcsim) as s:
        assert deploy(fleet, s, {**SECRET_ENV}).ok
    for n in range(1, 4):
        build(
            DEMO_IMAGE,
            env,
            BuildOptions(
                tmp_path / f"b{n + 1}", run_validators=False, now=t0 + timedelta(days=n), quiet=True
            ),
        )
    last = json.loads((tmp_path / "b4" / "manifest.json").read_text())
    assert last["retention"]["kept"] == ["demo-rocky9-k3s-202601041200", "demo-rocky9-k3s-202601031200"]
    assert last["retention"]["kept_linked"] == {
        "demo-rocky9-k3s-202601011200": ["ret-01", "ret-02", "ret-03"]
    }
    assert sorted(templates(fresh_vcsim)) == [
        "demo-rocky9-k3s-202601011200",
        "demo-rocky9-k3s-202601031200",
        "demo-rocky9-k3s-202601041200",
    ]
    # The second build's template was removed by the third or the fourth build.
    removed = json.loads((tmp_path / "b3" / "manifest.json").read_text())["retention"]["removed"]
    assert removed == ["demo-rocky9-k3s-202601021200"] or last["retention"]["removed"] == [
        "demo-rocky9-k3s-202601021200"
    ]


def test_build_wrong_password_is_one_line(vcsim: VcsimHandle, tmp_path: Path) -> None:
    env = {**os.environ, **vcsim.env(VSPHERE_PASSWORD="Not-The-Password-3")}
    proc = subprocess.run(
        [BUILDER, "build", str(DEMO_IMAGE), "-o", str(tmp_path / "b")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING")]
    assert errors == [
        f"error: vCenter {vcsim.server}: login failed for user '{vcsim.user}': wrong user name or password"
    ]
    assert "Not-The-Password-3" not in proc.stderr + proc.stdout
    assert not (tmp_path / "b").exists(), "nothing rendered before the login succeeded"


@pytest.mark.slow
@pytest.mark.fault("Ctrl-C during packer build", "Packer cleans up, exit 130, no VM left")
def test_ctrl_c_during_packer_build(tmp_path: Path) -> None:
    # Reconfigure (Packer's "Customizing hardware", right after the clone) is slowed so the interrupt
    # lands while the half-built VM exists.
    sim = start_vcsim("-method-delay", "ReconfigVM_Task=2500")
    try:
        before = templates(sim, "")
        args = ["build", str(DEMO_IMAGE), "-o", str(tmp_path / "b"), "--skip-validators"]
        proc, seen = builder_until(args, sim.env(), "Customizing hardware")
        assert "Customizing hardware" in seen[-1], "".join(seen)
        assert len(templates(sim, "demo-rocky9-k3s-")) == 1, "the half-built VM exists"
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        seen.extend(proc.stderr)
        assert proc.wait(timeout=120) == 130, "".join(seen)
        assert any("Destroying VM" in ln for ln in seen), "".join(seen)
        assert templates(sim, "") == before, "a VM was left behind"
        assert not (tmp_path / "b" / "manifest.json").exists()
    finally:
        sim.stop()


@pytest.mark.fault(
    "build: missing datastore / network / source template / cluster", "exit 1, one line naming it"
)
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("datastore: LocalDS_0", "datastore: NoSuchDS", "datastore 'NoSuchDS' not found in datacenter 'DC0'"),
        ("network: VM Network", "network: NoSuchNet", "network 'NoSuchNet' not found in datacenter 'DC0'"),
        (
            "template: DC0_H0_VM0",
            "template: NoSuchBase",
            "source template 'NoSuchBase' not found in datacenter 'DC0'",
        ),
        (
            "cluster: DC0_C0",
            "cluster: NoSuchCluster",
            "cluster 'NoSuchCluster' not found in datacenter 'DC0'",
        ),
    ],
)
def test_build_missing_object_is_one_line(
    vcsim: VcsimHandle, tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = DEMO_IMAGE.read_text()
    assert old in text
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace(old, new))
    env = {**os.environ, **vcsim.env()}
    proc = subprocess.run(
        [BUILDER, "-q", "build", str(spec), "-o", str(tmp_path / "b")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {expected}"]
    assert "Traceback" not in proc.stderr and vcsim.password not in proc.stderr + proc.stdout


def _create_library(sim: VcsimHandle, name: str) -> None:
    from builder.vsphere.connection import Credentials
    from builder.vsphere.library import RestClient

    with session_for(sim) as s:
        ds = inventory.datastore(s, inventory.datacenter(s, "DC0"), "LocalDS_0")._moId
    rest = RestClient(Credentials.from_env(sim.env()))
    backing = [{"type": "DATASTORE", "datastore_id": ds}]
    rest._call(
        "POST",
        "/com/vmware/content/local-library",
        {"create_spec": {"name": name, "type": "LOCAL", "storage_backings": backing}},
    )
    rest.close()


@pytest.mark.allow_subp("packer", "git")
def test_build_imports_into_content_library(fresh_vcsim: VcsimHandle, tmp_path: Path) -> None:
    # The simulator implements the OVF import (vcenter/ovf/library-item); its VM-template (vmtx) import
    # is not usable with Packer 1.6.6, so the test publishes as OVF.
    spec = tmp_path / "cl.yaml"
    spec.write_text(
        DEMO_IMAGE.read_text().replace(
            "  convert_to_template: true",
            "  convert_to_template: false\n"
            "  content_library: {name: arcbake-lib, item: demo-rocky9, ovf: true}",
        )
    )
    env = {**os.environ, **fresh_vcsim.env()}
    with pytest.raises(NotFoundError, match="content library 'arcbake-lib' not found"):
        build(spec, env, BuildOptions(tmp_path / "b0", run_validators=False, quiet=True))
    _create_library(fresh_vcsim, "arcbake-lib")
    manifest = build(spec, env, BuildOptions(tmp_path / "b1", run_validators=False, quiet=True))
    lib = manifest["template"]["content_library"]
    assert lib["library"] == "arcbake-lib" and lib["item"] == "demo-rocky9" and lib["ovf"] is True
    assert len(lib["item_id"]) == 36 and len(lib["library_id"]) == 36


@pytest.mark.slow
def test_the_spec_builder_init_writes_builds_on_the_simulator_as_written(
    fresh_vcsim: VcsimHandle, tmp_path: Path
) -> None:
    spec = tmp_path / "image.yaml"
    env = {**os.environ, **fresh_vcsim.env()}
    init = subprocess.run([BUILDER, "init", str(spec)], env=env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    proc = subprocess.run(
        [BUILDER, "build", str(spec), "-o", str(tmp_path / "b"), "-q", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    name = json.loads(proc.stdout)["template"]["name"]
    assert templates(fresh_vcsim, prefix="rocky9-k3s-") == {name: True}
    # The same spec made real (communicator ssh) is refused for its placeholder checksums, before vCenter.
    real = spec.read_text().replace("communicator: none ", "communicator: ssh ")
    real = real.replace("  # ssh_public_key: ssh-ed25519 AAAA...", "  ssh_public_key: ssh-ed25519 AAAAC3Nza")
    spec.write_text(real)
    proc = subprocess.run(
        [BUILDER, "build", str(spec), "-q"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3 and f"builder pin {spec}" in proc.stderr, proc.stderr
