"""Checks every arcbake template must pass. See conftest.py for how to run them and where values come from."""

from __future__ import annotations

import re
from typing import Any

import pytest

K3S_STATE = ["/var/lib/rancher/k3s/server", "/etc/rancher/node"]
KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"


# --- packages and K3s ----------------------------------------------------------------------------------


@pytest.mark.el
@pytest.mark.parametrize(
    "package", ["open-vm-tools", "chrony", "firewalld", "python3.11", "container-selinux", "k3s-selinux"]
)
def test_package_installed(host: Any, expect: dict[str, Any], package: str) -> None:
    if package not in expect["packages"]:
        pytest.skip(f"{package} not expected by this image")
    assert host.package(package).is_installed, f"{package} is not installed"


@pytest.mark.group("k3s")
def test_k3s_pinned_version(host: Any, expect: dict[str, Any]) -> None:
    out = host.check_output("/usr/local/bin/k3s --version")
    assert expect["k3s_version"] in out.splitlines()[0], out


@pytest.mark.group("k3s")
def test_k3s_airgap_images_present(host: Any) -> None:
    images = host.file("/var/lib/rancher/k3s/agent/images")
    assert images.is_directory
    assert any(name.startswith("k3s-airgap-images-") for name in images.listdir())


@pytest.mark.group("k3s")
def test_k3s_installed_but_not_started(host: Any) -> None:
    k3s = host.service("k3s")
    assert not k3s.is_running, "k3s must not run in the template"
    assert not k3s.is_enabled, "k3s must not be enabled in the template (firstboot starts it)"


@pytest.mark.parametrize("path", K3S_STATE)
def test_no_cluster_state(host: Any, path: str) -> None:
    assert not host.file(path).exists, f"{path} must not be in the template"


def test_kubeconfig_absent(host: Any) -> None:
    assert not host.file(KUBECONFIG).exists


@pytest.mark.group("k3s")
def test_k3s_config(host: Any) -> None:
    conf = host.file("/etc/rancher/k3s/config.yaml")
    assert conf.exists
    text = conf.content_string
    assert re.search(r"^selinux: true$", text, re.M)
    assert re.search(r"^resolv-conf: /etc/rancher/k3s/resolv.conf$", text, re.M)
    # Server-only keys would stop `k3s agent` ("flag provided but not defined"): firstboot adds them.
    server_only = r"^(write-kubeconfig-mode|cluster-cidr|service-cidr|cluster-dns|disable|cluster-init):"
    assert not re.search(server_only, text, re.M)


@pytest.mark.group("azure")
def test_azure_cli_pinned(host: Any, expect: dict[str, Any]) -> None:
    out = host.check_output("az version --query '\"azure-cli\"' --output tsv")
    assert out.strip() == expect["azure_cli_version"]


# --- time ------------------------------------------------------------------------------------------------


def _first_unit(host: Any, *names: str) -> Any:
    for name in names:
        if host.run(f"systemctl cat {name}").rc == 0:
            return host.service(name)
    pytest.fail(f"none of {names} exists")


def test_chronyd_enabled(host: Any) -> None:
    assert _first_unit(host, "chronyd", "chrony").is_enabled


def test_chrony_servers(host: Any, expect: dict[str, Any]) -> None:
    text = host.file("/etc/chrony.conf").content_string
    servers = re.findall(r"^(?:server|pool)\s+(\S+)", text, re.M)
    assert servers == expect["ntp_servers"]


# --- network: firewall, DNS --------------------------------------------------------------------------------


@pytest.mark.el
def test_firewalld_enabled(host: Any) -> None:
    assert host.service("firewalld").is_enabled


@pytest.mark.el
def test_firewalld_public_zone_ports(host: Any, expect: dict[str, Any]) -> None:
    text = host.file("/etc/firewalld/zones/public.xml").content_string
    found = {f"{port}/{proto}" for proto, port in re.findall(r'<port protocol="(\w+)" port="([\d-]+)"', text)}
    assert set(expect["public_ports"]) <= found


@pytest.mark.el
def test_firewalld_trusted_sources(host: Any, expect: dict[str, Any]) -> None:
    text = host.file("/etc/firewalld/zones/trusted.xml").content_string
    assert set(expect["trusted_sources"]) <= set(re.findall(r'<source address="([^"]+)"', text))


@pytest.mark.group("dns")
def test_no_baked_dns_fix(host: Any) -> None:
    # The build resolves through the site's resolver up to the seal, and a clone through its own network's
    # (network.dns, DHCP): only firstboot's dns step may pin resolv.conf, and only on a clone whose
    # resolver fails (README, "DNS: who decides the clone's resolver").
    assert not host.file("/etc/NetworkManager/conf.d/90-arcbake-dns.conf").exists
    resolv = host.file("/etc/resolv.conf")
    if resolv.exists:
        assert "arcbake" not in resolv.content_string, "resolv.conf was written by arcbake"
    dns_none = host.run("grep -rlsE '^[[:space:]]*dns[[:space:]]*=[[:space:]]*none' /etc/NetworkManager")
    assert dns_none.stdout.strip() == "", f"NetworkManager dns=none in {dns_none.stdout.strip()}"


@pytest.mark.group("dns")
def test_pod_resolvers(host: Any, expect: dict[str, Any]) -> None:
    text = host.file("/etc/rancher/k3s/resolv.conf").content_string
    assert re.findall(r"^nameserver\s+(\S+)", text, re.M) == expect["pod_upstream_servers"]


def test_vmware_tools_excludes_cni(host: Any) -> None:
    text = host.file("/etc/vmware-tools/tools.conf").content_string
    assert re.search(r"^exclude-nics=.*cni\*.*flannel\*.*veth\*", text, re.M)


def test_cloud_init_vmware_datasource(host: Any) -> None:
    text = host.file("/etc/cloud/cloud.cfg.d/90-arcbake-vmware.cfg").content_string
    assert re.search(r"^datasource_list: \[VMware, None\]$", text, re.M)


# --- security --------------------------------------------------------------------------------------------


@pytest.mark.el
def test_selinux_enforcing(host: Any) -> None:
    assert host.check_output("getenforce").strip() == "Enforcing"


# --- firstboot -------------------------------------------------------------------------------------------


def test_firstboot_installed(host: Any) -> None:
    exe = host.file("/opt/arcbake/bin/firstboot")
    assert exe.exists and exe.mode & 0o111


def test_firstboot_unit_enabled(host: Any) -> None:
    unit = host.service("arcbake-firstboot")
    assert unit.is_enabled
    text = host.file("/etc/systemd/system/arcbake-firstboot.service").content_string
    assert "ConditionPathExists=!/var/lib/arcbake/done" in text
    # A directive, not the unit's comment that explains why it is not used.
    assert not re.search(r"^\s*ConditionFirstBoot\s*=", text, re.M)


def test_no_firstboot_state(host: Any) -> None:
    assert not host.file("/var/lib/arcbake").exists


# --- sealed ----------------------------------------------------------------------------------------------


@pytest.mark.sealed
def test_machine_id_empty(host: Any) -> None:
    machine_id = host.file("/etc/machine-id")
    assert machine_id.exists and machine_id.size == 0


@pytest.mark.sealed
def test_no_ssh_host_keys(host: Any) -> None:
    assert host.run("ls /etc/ssh/ssh_host_* 2>/dev/null").stdout.strip() == ""


@pytest.mark.sealed
def test_build_user_has_no_key(host: Any, expect: dict[str, Any]) -> None:
    user = host.user(expect["build_user"])
    if not user.exists:
        pytest.skip("no build user in this image")
    assert not host.file(f"{user.home}/.ssh/authorized_keys").exists


@pytest.mark.sealed
def test_build_sudoers_removed(host: Any, expect: dict[str, Any]) -> None:
    assert not host.file(expect["build_sudoers"]).exists, "the build user's sudo rights are in the template"


@pytest.mark.sealed
def test_no_root_azure(host: Any) -> None:
    # az's configuration and any token cache of the build (firstboot has its own AZURE_CONFIG_DIR).
    assert not host.file("/root/.azure").exists


def _enabled_sections(text: str) -> list[str]:
    """Sections of a dnf .repo file that are enabled (dnf's default when `enabled` is absent)."""
    state: dict[str, bool] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            state[section] = True
        elif section and re.match(r"^enabled\s*=", line):
            state[section] = line.split("=", 1)[1].strip().lower() in ("1", "true", "yes", "on")
    return [name for name, on in state.items() if on]


@pytest.mark.sealed
def test_third_party_repos_disabled(host: Any, expect: dict[str, Any]) -> None:
    # Air-gapped clones cannot reach Rancher's or Microsoft's repositories: dnf makecache would fail.
    listing = host.run("ls -1 /etc/yum.repos.d/ 2>/dev/null")
    repos = [f"/etc/yum.repos.d/{n}" for n in listing.stdout.split() if n.endswith(".repo")]
    if not repos:
        pytest.skip("no /etc/yum.repos.d/*.repo on this host")
    enabled = []
    for path in repos:
        if path.endswith("/redhat.repo"):
            continue  # subscription-manager's, rewritten when a clone registers
        owner = host.run("rpm -qf --queryformat %s %s", "%{NAME}", path)
        if owner.rc == 0 and owner.stdout.strip() in expect["distro_repo_packages"]:
            continue
        enabled += [f"{path} [{s}]" for s in _enabled_sections(host.file(path).content_string)]
    assert not enabled, f"third-party repositories still enabled: {', '.join(enabled)}"
