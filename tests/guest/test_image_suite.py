"""The image suite (tests/image, testinfra) run against the booted guest, before and after sealing.

The guest is the provisioned template state: arcbake installed by the build dir's 30/40 scripts, the
build dir's guest files in place, nothing of first boot run. It boots into basic.target (so
arcbake-firstboot.service, wanted by multi-user.target, stays enabled but unstarted, as in the Packer VM
between provisioning and sealing), and testinfra reaches it through the nspawn backend (nsenter).
Packer runs the very same suite over SSH against the baked VM (`--hosts=ssh://...`).

EL-only checks (RPM packages, SELinux, firewalld) skip themselves with a reason on this Debian guest.
The `k3s` and `azure` groups are skipped by ARCBAKE_IMAGE_SKIP: their provisioning scripts (10, 20)
download K3s and the Azure CLI from the internet, which this machine cannot reach.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from guest.guestroot import Guest

# 900 s: the first test also builds the cached guest root (debootstrap) and the arcbake layer.
pytestmark = [pytest.mark.boot, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SKIPPED_GROUPS = "k3s,azure"
# Checks that must RUN (and pass) on the guest, before sealing and after.
MUST_PASS = {
    "test_no_cluster_state[/var/lib/rancher/k3s/server]",
    "test_no_cluster_state[/etc/rancher/node]",
    "test_kubeconfig_absent",
    "test_chronyd_enabled",
    "test_chrony_servers",
    "test_host_resolvers",
    "test_pod_resolvers",
    "test_vmware_tools_excludes_cni",
    "test_cloud_init_vmware_datasource",
    "test_firstboot_installed",
    "test_firstboot_unit_enabled",
    "test_no_firstboot_state",
}
SEALED = {"test_machine_id_empty", "test_no_ssh_host_keys", "test_build_user_has_no_key"}
EL_ONLY = ("test_package_installed", "test_firewalld_", "test_selinux_enforcing")


def run_suite(build_dir: Path, init: int, junit: Path, *, sealed: bool) -> dict[str, tuple[str, str]]:
    """Run the build dir's tests/image against the running guest; {test name: (outcome, message)}."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO / "tests"),
        ARCBAKE_IMAGE_SKIP=SKIPPED_GROUPS,
        ARCBAKE_IMAGE_EXPECT=str(build_dir / "image-expect.json"),
    )
    env.pop("ARCBAKE_IMAGE_SEALED", None)
    if sealed:
        env["ARCBAKE_IMAGE_SEALED"] = "1"
    cmd = [sys.executable, "-m", "pytest", str(build_dir / "tests" / "image"), "-p", "guest.testinfra_nspawn"]
    cmd += [f"--hosts=nspawn://{init}", "-p", "no:cacheprovider", f"--junitxml={junit}", "-q", "-rs"]
    proc = subprocess.run(
        cmd, cwd=build_dir, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert junit.exists(), proc.stdout + proc.stderr
    results: dict[str, tuple[str, str]] = {}
    # Our own pytest's report, not untrusted input.
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome, message = kind, node.get("message", "") + (node.text or "")[:500]
        # testinfra adds the host to every id: test_x[nspawn://123] / test_x[nspawn://123-param].
        name = re.sub(r"\[nspawn://\d+-?", "[", case.get("name", "")).replace("[]", "")
        results[name] = (outcome, message)
    return results


def check_results(results: dict[str, tuple[str, str]], *, sealed: bool) -> None:
    """Everything ran and passed except EL-only checks and the skipped groups, each with its reason."""
    broken = {name: r for name, r in results.items() if r[0] in ("failure", "error")}
    assert not broken, broken
    for name in MUST_PASS | (SEALED if sealed else set()):
        assert results.get(name, ("missing", ""))[0] == "passed", (name, results.get(name))
    el = {name: r for name, r in results.items() if name.startswith(EL_ONLY)}
    assert len(el) >= 5
    for name, (outcome, message) in el.items():
        assert outcome == "skipped" and "EL-only check" in message, (name, outcome, message)
    for name, (outcome, message) in results.items():
        if outcome == "skipped" and name not in el:
            assert "ARCBAKE_IMAGE_SKIP" in message or (not sealed and "sealing" in message), (name, message)


def test_image_suite_on_the_booted_guest(
    new_guest: Callable[[], Guest], build_dir: Path, tmp_path: Path
) -> None:
    guest = new_guest()
    # The template as Packer leaves it: the image's resolv.conf, and the build user of the kickstart.
    shutil.copy2(build_dir / "rootfs/etc/resolv.conf", guest.path("/etc/resolv.conf"))
    guest.run("useradd", "--create-home", "arcbake")
    guest.write(
        "/home/arcbake/.ssh/authorized_keys", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITest build\n", 0o600
    )
    guest.write("/etc/ssh/ssh_host_ed25519_key", "not a real key\n", 0o600)
    shutil.copy2(build_dir / "scripts/90-seal.sh", guest.path("/root/90-seal.sh"))

    with guest.running() as init:
        before = run_suite(build_dir, init, tmp_path / "unsealed.xml", sealed=False)
        check_results(before, sealed=False)
        assert all(before[name][0] == "skipped" for name in SEALED if name in before)

        seal = Guest.enter(init, "/bin/bash", "/root/90-seal.sh", timeout=120)
        assert seal.returncode == 0, seal.stdout + seal.stderr
        after = run_suite(build_dir, init, tmp_path / "sealed.xml", sealed=True)
        check_results(after, sealed=True)
