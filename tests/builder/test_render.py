"""render(): the documented build dir, golden renders of the four variants, no credentials, atomicity.

Regenerate the goldens after an intended template change with `ARCBAKE_REGEN_GOLDEN=1 pytest tests/builder`.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pytest
from spec_base import BASE, variant

from builder import render as render_mod
from builder.assets import packer_dir
from builder.render import RenderError, SecretEnvError, packer_secret_env, render
from builder.spec import ImageSpec, SpecError, load_spec, parse_spec
from firstboot.located_yaml import load_located

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
NOW = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
PACKER_166 = (1, 6, 6)
VARIANTS = ["rocky8", "rocky9", "rhel8", "rhel9"]

LAYOUT = {
    "arcbake-build.json",
    "image-expect.json",
    "http/ks.cfg",
    "packer/arcbake.auto.pkrvars.json",
    "packer/build.pkr.hcl",
    "packer/sources.pkr.hcl",
    "packer/variables.pkr.hcl",
    "rootfs/etc/arcbake/image.json",
    "rootfs/etc/arcbake/k3s-server.yaml",
    "rootfs/etc/chrony.conf",
    "rootfs/etc/cloud/cloud.cfg.d/90-arcbake-vmware.cfg",
    "rootfs/etc/firewalld/zones/public.xml",
    "rootfs/etc/firewalld/zones/trusted.xml",
    "rootfs/etc/rancher/k3s/config.yaml",
    "rootfs/etc/rancher/k3s/resolv.conf",
    "rootfs/etc/systemd/system/arcbake-firstboot.service",
    "rootfs/etc/systemd/system/arcbake-rotate.service",
    "rootfs/etc/systemd/system/arcbake-rotate.timer",
    "rootfs/etc/vmware-tools/tools.conf",
    "scripts/10-install-k3s-airgap.sh",
    "scripts/20-install-azure-cli.sh",
    "scripts/30-install-firstboot.sh",
    "scripts/40-enable-units.sh",
    "scripts/90-seal.sh",
}


def parse(text: str) -> ImageSpec:
    return parse_spec(load_located(text, "spec.yaml"))


def example(name: str) -> ImageSpec:
    return load_spec(REPO / "examples" / f"{name}.yaml")


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_layout(tmp_path: Path) -> None:
    out = tmp_path / "build"
    result = render(parse(BASE), out, now=NOW, packer=PACKER_166)
    files = {f for f in tree(out) if not f.startswith("tests/")}
    assert files == LAYOUT
    assert (out / "wheelhouse").is_dir()
    assert result.vm_name == "rocky9-k3s-20260102"
    assert result.packer_only == "vsphere-clone.clone_offline"
    assert not result.plugins_included
    assert {str(p.relative_to(out)) for p in result.files} >= LAYOUT
    for script in (out / "scripts").iterdir():
        assert script.stat().st_mode & 0o777 == 0o755
        assert script.read_text().startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in script.read_text()
    assert (out / "rootfs/etc/rancher/k3s/config.yaml").stat().st_mode & 0o077 == 0


def test_image_tests_travel_with_the_build_dir(tmp_path: Path) -> None:
    out = tmp_path / "build"
    render(parse(BASE), out, now=NOW, packer=PACKER_166)
    assert {"conftest.py", "test_image.py"} <= {p.name for p in (out / "tests/image").iterdir()}
    expect = json.loads((out / "image-expect.json").read_text())
    assert expect["k3s_version"] == "v1.31.4+k3s1"
    assert expect["ntp_servers"] == ["ntp.example.org"]
    assert expect["public_ports"] == ["6443/tcp", "10250/tcp"]


def test_plugins_file_only_for_packer_1_7(tmp_path: Path) -> None:
    render(parse(BASE), tmp_path / "old", now=NOW, packer=PACKER_166)
    render(parse(BASE), tmp_path / "new", now=NOW, packer=(1, 11, 2))
    assert not (tmp_path / "old/packer/plugins.pkr.hcl").exists()
    assert (tmp_path / "new/packer/plugins.pkr.hcl").read_text() == (
        packer_dir() / "plugins.pkr.hcl"
    ).read_text()
    for hcl in ("build.pkr.hcl", "sources.pkr.hcl", "variables.pkr.hcl"):
        assert (tmp_path / "old/packer" / hcl).read_text() == (packer_dir() / hcl).read_text()


def test_pkrvars_only_declares_known_variables(tmp_path: Path) -> None:
    render(example("rhel9"), tmp_path / "b", now=NOW, packer=PACKER_166)
    declared = set(re.findall(r'^variable "(\w+)"', (packer_dir() / "variables.pkr.hcl").read_text(), re.M))
    pkrvars = json.loads((tmp_path / "b/packer/arcbake.auto.pkrvars.json").read_text())
    assert set(pkrvars) <= declared
    # Credentials are variables too, but only ever arrive as PKR_VAR_* environment.
    assert not {"vsphere_user", "vsphere_password", "rhsm_org", "rhsm_activation_key"} & set(pkrvars)
    assert pkrvars["iso_paths"] == ["[LocalDS_0] iso/rhel-9.5-x86_64-dvd.iso"]
    assert pkrvars["configuration_parameters"]["tools.syncTime"] == "FALSE"


@pytest.mark.parametrize("name", VARIANTS)
def test_golden(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    render(example(name), out, now=NOW, packer=PACKER_166)
    # Static Packer HCL and the copied image tests are checked against their sources elsewhere.
    parts = []
    for rel in sorted(tree(out)):
        if rel.endswith(".pkr.hcl") or rel.startswith("tests/"):
            continue
        parts.append(f"===== {rel}\n{(out / rel).read_text()}")
    text = "".join(parts)
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("ARCBAKE_REGEN_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"missing {golden}: run with ARCBAKE_REGEN_GOLDEN=1"
    assert text == golden.read_text(), (
        f"{name} render differs from {golden} (ARCBAKE_REGEN_GOLDEN=1 if intended)"
    )


def test_variant_differences(tmp_path: Path) -> None:
    for name in VARIANTS:
        render(example(name), tmp_path / name, now=NOW, packer=PACKER_166)
    ks8 = (tmp_path / "rocky8/http/ks.cfg").read_text()
    ks9 = (tmp_path / "rocky9/http/ks.cfg").read_text()
    assert not re.search(r"^timesource", ks8, re.M) and "--ntpservers=" in ks8
    assert "timesource --ntp-server=" in ks9
    for ks in (ks8, ks9):
        assert "selinux --enforcing" in ks and "reqpart --add-boot" in ks and "python3.11" in ks
    unit8 = (tmp_path / "rhel8/rootfs/etc/systemd/system/arcbake-firstboot.service").read_text()
    unit9 = (tmp_path / "rhel9/rootfs/etc/systemd/system/arcbake-firstboot.service").read_text()
    assert "Restart=on-failure" in unit9 and "Restart=" not in unit8.replace(
        "# systemd 239 (EL8) refuses Restart=", ""
    )
    assert (tmp_path / "rhel9/scripts/05-register-rhsm.sh").exists()
    assert not (tmp_path / "rocky9/scripts/05-register-rhsm.sh").exists()
    # rhel9 has a proxy: the k3s and login-shell environments carry it, with the cluster ranges.
    env = (tmp_path / "rhel9/rootfs/etc/arcbake/k3s.service.env").read_text()
    assert 'HTTPS_PROXY="http://proxy.example.internal:3128"' in env
    assert re.search(r'^NO_PROXY=".*10\.42\.0\.0/16.*\.svc.*\.cluster\.local.*"$', env, re.M)
    assert "CONTAINERD_HTTPS_PROXY=" in env
    assert not (tmp_path / "rocky9/rootfs/etc/arcbake/k3s.service.env").exists()


def test_no_credentials_in_build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    org, key = "org-7391-secret", "actkey-Zq81-secret"
    monkeypatch.setenv("RHSM_ORG", org)
    monkeypatch.setenv("RHSM_ACTIVATION_KEY", key)
    monkeypatch.setenv("VSPHERE_PASSWORD", "vc-pass-93xx")
    spec = example("rhel9")
    out = tmp_path / "b"
    render(spec, out, now=NOW, packer=PACKER_166)
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            for secret in (org, key, "vc-pass-93xx"):
                assert secret not in text, f"{secret} leaked into {path}"
    env = packer_secret_env(spec, {"RHSM_ORG": org, "RHSM_ACTIVATION_KEY": key, "ARCBAKE_SSH_KEY_FILE": "/k"})
    assert env == {
        "PKR_VAR_rhsm_org": org,
        "PKR_VAR_rhsm_activation_key": key,
        "PKR_VAR_ssh_private_key_file": "/k",
    }


def test_secret_env_names_what_is_missing() -> None:
    with pytest.raises(SecretEnvError, match="RHSM_ACTIVATION_KEY") as info:
        packer_secret_env(example("rhel9"), {"RHSM_ORG": "1234", "ARCBAKE_SSH_KEY_FILE": "/k"})
    assert "1234" not in str(info.value)
    assert packer_secret_env(parse(BASE), {}) == {}


def test_rerender_replaces_an_earlier_render(tmp_path: Path) -> None:
    out = tmp_path / "b"
    render(example("rhel9"), out, now=NOW, packer=PACKER_166)
    assert (out / "scripts/05-register-rhsm.sh").exists()
    render(example("rocky9"), out, now=NOW, packer=PACKER_166)
    assert not (out / "scripts/05-register-rhsm.sh").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(RenderError, match="not an arcbake build dir"):
        render(parse(BASE), tmp_path, now=NOW, packer=PACKER_166)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_failure_leaves_nothing_half_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "b"
    render(example("rocky8"), out, now=NOW, packer=PACKER_166)
    before = {p: (out / p).read_bytes() for p in tree(out)}
    real = render_mod._write
    calls = {"n": 0}

    def failing_write(path: Path, text: str, mode: int = 0o644) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise jinja2.TemplateError("boom in the middle")
        real(path, text, mode)

    monkeypatch.setattr(render_mod, "_write", failing_write)
    with pytest.raises(RenderError, match="boom in the middle"):
        render(example("rocky9"), out, now=NOW, packer=PACKER_166)
    assert {p: (out / p).read_bytes() for p in tree(out)} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


@pytest.mark.parametrize("name", ["rocky9", "rhel9"])
def test_build_keeps_the_site_resolver(tmp_path: Path, name: str) -> None:
    # The guest files are copied before scripts 05-40 (RHSM, dnf, curl through a proxy only the site's DNS
    # knows): nothing copied may replace the build VM's resolver, and no script may install a DNS fix.
    render(example(name), tmp_path / "b", now=NOW, packer=PACKER_166)
    out = tmp_path / "b"
    assert not (out / "rootfs/etc/resolv.conf").exists()
    assert not list((out / "rootfs/etc").glob("NetworkManager/**/*"))
    for script in (out / "scripts").glob("*.sh"):
        text = script.read_text()
        assert "dns=none" not in text and "/etc/resolv.conf" not in text, script.name
    # Pods still get their upstream through k3s resolv-conf.
    assert "nameserver 1.1.1.1" in (out / "rootfs/etc/rancher/k3s/resolv.conf").read_text()


@pytest.mark.parametrize("key", ["upstream_servers: [1.1.1.1]", "apply_fix: true", "search: [corp.test]"])
def test_host_dns_keys_moved_to_the_fleet(key: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(variant("build:\n", f"dns: {{{key}}}\nbuild:\n"))
    text = str(info.value)
    assert "no longer accepted here" in text and "fleet file" in text and "dns." in text


@pytest.mark.parametrize(
    ("profile", "ports"),
    [
        ("single-node", {"6443/tcp", "10250/tcp"}),
        ("multi-node", {"6443/tcp", "10250/tcp", "8472/udp", "51820-51821/udp"}),
        ("ha-etcd", {"6443/tcp", "10250/tcp", "8472/udp", "51820-51821/udp", "2379-2380/tcp"}),
    ],
)
def test_firewall_profiles(tmp_path: Path, profile: str, ports: set[str]) -> None:
    spec = parse(
        variant("build:\n", f"firewall: {{profile: {profile}, extra_ports: [{{port: 30080}}]}}\nbuild:\n")
    )
    render(spec, tmp_path / "b", now=NOW, packer=PACKER_166)
    xml = (tmp_path / "b/rootfs/etc/firewalld/zones/public.xml").read_text()
    found = {f"{port}/{proto}" for proto, port in re.findall(r'protocol="(\w+)" port="([\d-]+)"', xml)}
    assert found == ports | {"30080/tcp"}
    trusted = (tmp_path / "b/rootfs/etc/firewalld/zones/trusted.xml").read_text()
    assert re.findall(r'source address="([^"]+)"', trusted) == ["10.42.0.0/16", "10.43.0.0/16"]


def test_unit_timeout_outlasts_every_step_timeout(tmp_path: Path) -> None:
    # systemd's TimeoutStartSec must never fire before a step's own timeout: the step's failure carries
    # the broken link and its remedy, a killed unit carries nothing.
    from firstboot import steps

    out = render(example("rocky9"), tmp_path / "build", detect_packer=False).out_dir
    unit = (out / "rootfs/etc/systemd/system/arcbake-firstboot.service").read_text()
    match = re.search(r"^TimeoutStartSec=(\d+)$", unit, re.MULTILINE)
    assert match, unit
    budget = sum(step.meta.timeout_seconds for step in steps.load())
    assert int(match.group(1)) > budget
    assert re.search(r"^KillMode=process$", unit, re.MULTILINE)


def test_nothing_after_the_seal_needs_sudo(tmp_path: Path) -> None:
    # The seal removes the build user's sudoers drop-in, so Packer must power the VM off through VMware
    # Tools (no shutdown_command: builder/vsphere/common/step_shutdown.go then calls vm.StartShutdown()),
    # and the seal must be the last provisioner.
    sources = (packer_dir() / "sources.pkr.hcl").read_text()
    assert not re.search(r"^\s*shutdown_command\s*=", sources, re.M)
    build_hcl = (packer_dir() / "build.pkr.hcl").read_text()
    last = build_hcl[build_hcl.rindex('provisioner "') :]
    assert '"9[0-9]-*.sh"' in last
    render(example("rocky9"), tmp_path / "b", now=NOW, packer=PACKER_166)
    seal = (tmp_path / "b/scripts/90-seal.sh").read_text()
    assert 'rm -f "/etc/sudoers.d/90-arcbake-build"' in seal and "rm -rf /root/.azure" in seal
