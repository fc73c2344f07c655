"""What the templates are given: derived values, the file plan, the Packer variables.

Kept apart from `render.py` (which does the file system work) so the derivations can be tested alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from builder import topology
from builder.guestinfo import BUILD_SUDOERS, build_access
from builder.spec import Distro, FirewallProfile, Firmware, ImageSpec
from firstboot import proxyenv

# K3s inbound rules (docs.k3s.io, "Networking requirements"): what each profile opens on the node.
# Traffic from pods and services is accepted by the trusted zone instead (its sources are the CIDRs).
_API = {"port": "6443", "protocol": "tcp", "why": "Kubernetes API"}
_KUBELET = {"port": "10250", "protocol": "tcp", "why": "kubelet metrics"}
_VXLAN = {"port": "8472", "protocol": "udp", "why": "flannel VXLAN"}
_WIREGUARD = {"port": "51820-51821", "protocol": "udp", "why": "flannel WireGuard (IPv4, IPv6)"}
_ETCD = {"port": "2379-2380", "protocol": "tcp", "why": "embedded etcd (HA servers)"}
PROFILE_PORTS: dict[FirewallProfile, list[dict[str, str]]] = {
    FirewallProfile.SINGLE_NODE: [_API, _KUBELET],
    FirewallProfile.MULTI_NODE: [_API, _KUBELET, _VXLAN, _WIREGUARD],
    FirewallProfile.HA_ETCD: [_API, _KUBELET, _VXLAN, _WIREGUARD, _ETCD],
}

BUILD_INFO_NAME = "arcbake-build.json"

GUEST_OS_TYPE = {8: "rhel8_64Guest", 9: "rhel9_64Guest"}

# VMX settings that stop VMware Tools from setting the guest clock (chrony owns it).
TIMESYNC_OFF = {
    "tools.syncTime": "FALSE",
    "time.synchronize.continue": "FALSE",
    "time.synchronize.restore": "FALSE",
    "time.synchronize.resume.disk": "FALSE",
    "time.synchronize.shrink": "FALSE",
    "time.synchronize.tools.startup": "FALSE",
    "time.synchronize.tools.enable": "FALSE",
    "time.synchronize.resume.host": "FALSE",
}


@dataclass(frozen=True)
class PlannedFile:
    """One rendered file: template name, path inside the build dir, file mode."""

    template: str
    dest: str
    mode: int = 0o644


def parse_packer_version(text: str) -> tuple[int, int, int] | None:
    """`Packer v1.6.6` (and later formats) -> (1, 6, 6)."""
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        return None
    return (int(match[1]), int(match[2]), int(match[3]))


def spec_digest(spec: ImageSpec) -> str:
    """sha256 of the spec's canonical JSON (identifies the spec a template was built from)."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def packer_only(spec: ImageSpec) -> str:
    """The `-only` build name: vsphere-iso.iso, vsphere-clone.clone, or their *_offline variants."""
    base = "vsphere-iso.iso" if spec.source.iso is not None else "vsphere-clone.clone"
    return base + ("_offline" if spec.build.communicator == "none" else "")


def public_ports(spec: ImageSpec) -> list[dict[str, str]]:
    """Ports of the public zone: the profile's, then the spec's extras (no duplicates)."""
    out = [dict(p) for p in PROFILE_PORTS[spec.firewall.profile]]
    for extra in spec.firewall.extra_ports:
        rule = {"port": str(extra.port), "protocol": extra.protocol, "why": "extra port from the spec"}
        if not any(r["port"] == rule["port"] and r["protocol"] == rule["protocol"] for r in out):
            out.append(rule)
    return out


# Packages whose .repo files are the distribution's own (Rocky, RHEL with subscription-manager's
# redhat.repo): the seal leaves them enabled and disables every other repository (Rancher's, Microsoft's),
# which air-gapped clones cannot reach (`dnf makecache` would fail on each). The image suite checks the same.
DISTRO_REPO_PACKAGES = ("rocky-repos", "rocky-release", "redhat-release", "subscription-manager")


def boot_command(spec: ImageSpec) -> list[str]:
    """Keystrokes that add the kickstart to the installer's kernel line (GRUB on EFI, isolinux on BIOS)."""
    ks = " inst.text inst.ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/ks.cfg"
    if spec.hardware.firmware is Firmware.EFI:
        # First entry ("Install ..."), edit it, go to the end of the linuxefi line, boot with Ctrl-X.
        return ["<up>", "e", "<down><down><end><wait>", ks, "<leftCtrlOn>x<leftCtrlOff>"]
    return ["<up><tab><wait>", ks, "<enter>"]


def file_plan(spec: ImageSpec) -> list[PlannedFile]:
    """Every file rendered for this spec; optional ones (proxy, DNS fix, RHSM) only when they apply."""
    plan = [
        PlannedFile(f"kickstart/el{spec.os.major}.cfg.j2", "http/ks.cfg"),
        PlannedFile("rootfs/etc/chrony.conf.j2", "rootfs/etc/chrony.conf"),
        PlannedFile("rootfs/etc/firewalld/zones/public.xml.j2", "rootfs/etc/firewalld/zones/public.xml"),
        PlannedFile("rootfs/etc/firewalld/zones/trusted.xml.j2", "rootfs/etc/firewalld/zones/trusted.xml"),
        PlannedFile("rootfs/etc/rancher/k3s/config.yaml.j2", "rootfs/etc/rancher/k3s/config.yaml", 0o600),
        PlannedFile("rootfs/etc/rancher/k3s/resolv.conf.j2", "rootfs/etc/rancher/k3s/resolv.conf"),
        PlannedFile("rootfs/etc/vmware-tools/tools.conf.j2", "rootfs/etc/vmware-tools/tools.conf"),
        PlannedFile(
            "rootfs/etc/cloud/cloud.cfg.d/90-arcbake-vmware.cfg.j2",
            "rootfs/etc/cloud/cloud.cfg.d/90-arcbake-vmware.cfg",
        ),
        *(
            PlannedFile(f"rootfs/etc/systemd/system/{unit}.j2", f"rootfs/etc/systemd/system/{unit}")
            for unit in ("arcbake-firstboot.service", "arcbake-rotate.service", "arcbake-rotate.timer")
        ),
        PlannedFile("rootfs/etc/arcbake/image.json.j2", "rootfs/etc/arcbake/image.json"),
        PlannedFile("rootfs/etc/arcbake/k3s-server.yaml.j2", "rootfs/etc/arcbake/k3s-server.yaml"),
    ]
    # No DNS fix in the image: the build resolves through the site's resolver up to the seal (RHSM, dnf,
    # curl and a proxy name only the site's DNS knows), and each clone keeps its own network's resolver
    # unless firstboot's dns step finds it broken (README, "DNS: who decides the clone's resolver").
    if spec.proxy.enabled:
        plan += [
            PlannedFile("rootfs/etc/arcbake/k3s.service.env.j2", "rootfs/etc/arcbake/k3s.service.env", 0o600),
            PlannedFile("rootfs/etc/profile.d/arcbake-proxy.sh.j2", "rootfs/etc/profile.d/arcbake-proxy.sh"),
        ]
    if spec.proxy.ca_bundle_pem:
        plan.append(
            PlannedFile(
                "rootfs/etc/pki/ca-trust/source/anchors/arcbake-proxy-ca.pem.j2",
                "rootfs/etc/pki/ca-trust/source/anchors/arcbake-proxy-ca.pem",
            )
        )
    scripts = ["10-install-k3s-airgap", "20-install-azure-cli", "30-install-firstboot", "40-enable-units"]
    if spec.os.distro is Distro.RHEL:
        scripts.insert(0, "05-register-rhsm")
    scripts.append("90-seal")
    plan += [PlannedFile(f"scripts/{s}.sh.j2", f"scripts/{s}.sh", 0o755) for s in scripts]
    return plan


def build_context(spec: ImageSpec, now: datetime) -> dict[str, Any]:
    """The Jinja2 context: the spec plus derived values."""
    vm_name = spec.template_name(now)
    digest = spec_digest(spec)
    ports = public_ports(spec)
    image_info = {
        "schema_version": 1,
        "variant": spec.os.variant,
        "template": vm_name,
        "built_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "spec_sha256": digest,
        "k3s_version": spec.k3s.version,
        "azure_cli_version": spec.azure.cli_version,
        "azure_extensions": spec.azure.extensions.model_dump(),
        "helm_version": spec.azure.helm.version,
        "firewall_profile": spec.firewall.profile.value,
        # The address ranges the firewall's trusted zone was built for (builder/topology.py).
        "k3s_network": topology.network_record(spec.k3s),
    }
    expect = {
        "variant": spec.os.variant,
        "os_major": spec.os.major,
        "k3s_version": spec.k3s.version,
        "ntp_servers": list(spec.time.ntp_servers),
        "firewall_profile": spec.firewall.profile.value,
        "public_ports": [f"{p['port']}/{p['protocol']}" for p in ports],
        "trusted_sources": spec.trusted_sources,
        "pod_upstream_servers": [str(s) for s in spec.dns.pod_upstream_servers],
        "azure_cli_version": spec.azure.cli_version,
        "packages": [
            "open-vm-tools",
            "chrony",
            "firewalld",
            "python3.11",
            "container-selinux",
            "k3s-selinux",
        ],
        "build_user": spec.build.ssh_username,
        "build_sudoers": BUILD_SUDOERS,
        "distro_repo_packages": list(DISTRO_REPO_PACKAGES),
    }
    return {
        "spec": spec,
        "vm_name": vm_name,
        "build_sudoers": BUILD_SUDOERS,
        "distro_repo_packages": DISTRO_REPO_PACKAGES,
        "spec_sha256": digest,
        "public_ports": ports,
        "proxy_k3s_env": proxyenv.k3s_env_lines(spec.proxy, spec.k3s),
        "proxy_profile": proxyenv.profile_lines(spec.proxy, spec.k3s),
        "extensions": [
            ("connectedk8s", spec.azure.extensions.connectedk8s),
            ("k8s-extension", spec.azure.extensions.k8s_extension),
            ("k8s-configuration", spec.azure.extensions.k8s_configuration),
        ],
        "image_info": image_info,
        "expect": expect,
    }


# extraConfig key on the template -> field of image.json it records (read back by builder.lineage).
LINEAGE_KEYS = {
    "arcbake.image.variant": "variant",
    "arcbake.image.built": "built_at",
    "arcbake.image.k3s_version": "k3s_version",
    "arcbake.image.spec_sha256": "spec_sha256",
    # What deploy checks a fleet's clusters against (builder/topology.py).
    "arcbake.image.firewall_profile": "firewall_profile",
    "arcbake.image.k3s_network": "k3s_network",
}


def pkrvars(spec: ImageSpec, ctx: dict[str, Any], *, run_image_tests: bool) -> dict[str, Any]:
    """`arcbake.auto.pkrvars.json`: every non-secret Packer variable of packer/variables.pkr.hcl."""
    info = ctx["image_info"]
    params = {
        "disk.EnableUUID": "TRUE",
        "guestinfo.arcbake.image": f"{spec.os.variant} k3s={spec.k3s.version} spec={ctx['spec_sha256'][:16]}",
        # The template's lineage record (`builder templates`): non-guestinfo keys, invisible to the guest.
        **{key: str(info[field]) for key, field in LINEAGE_KEYS.items()},
    }
    if spec.time.disable_vmware_tools_timesync:
        params.update(TIMESYNC_OFF)
    if spec.build_access_by_guestinfo and spec.build.ssh_public_key:
        params.update(build_access(ctx["vm_name"], spec.build.ssh_username, spec.build.ssh_public_key))
    iso = spec.source.iso
    out: dict[str, Any] = {
        "vm_name": ctx["vm_name"],
        "notes": f"arcbake {spec.os.variant} K3s {spec.k3s.version} spec sha256 {ctx['spec_sha256']}",
        "datacenter": spec.vsphere.datacenter,
        "cluster": spec.vsphere.cluster or "",
        "host": spec.vsphere.host or "",
        "resource_pool": spec.vsphere.resource_pool or "",
        "datastore": spec.vsphere.datastore,
        "network": spec.vsphere.network,
        "folder": spec.vsphere.folder,
        "guest_os_type": GUEST_OS_TYPE[spec.os.major],
        "firmware": spec.hardware.firmware.value,
        "cpus": spec.hardware.cpus,
        "memory_mib": spec.hardware.memory_mib,
        "disk_mib": spec.hardware.disk_gib * 1024,
        "configuration_parameters": params,
        "iso_url": (iso.url or "") if iso else "",
        "iso_checksum": (iso.checksum or "none") if iso else "none",
        "iso_paths": [iso.datastore_path] if iso and iso.datastore_path else [],
        "boot_command": boot_command(spec),
        "boot_wait": spec.build.boot_wait,
        "clone_template": spec.source.clone.template if spec.source.clone else "",
        "ssh_username": spec.build.ssh_username,
        # Both spellings (curl and dnf's libcurl only honour the lower-case http_proxy). Packer quotes
        # each value itself; the proxy patterns keep out what its shell would interpret anyway.
        "build_env": [f"{k}={v}" for k, v in spec.proxy_environment.items()],
        "run_image_tests": spec.build.run_image_tests and run_image_tests,
        # With build access by guestinfo, builder blanks those keys first and converts the VM itself.
        "convert_to_template": spec.publish.convert_to_template and not spec.build_access_by_guestinfo,
        "content_library": spec.publish.content_library.name if spec.publish.content_library else "",
        # Packer refuses a library item named like the VM it is made from, hence the suffix.
        "content_library_item": (
            (spec.publish.content_library.item or f"{ctx['vm_name']}-item")
            if spec.publish.content_library
            else ""
        ),
        "content_library_ovf": bool(spec.publish.content_library and spec.publish.content_library.ovf),
    }
    return out


def build_info(spec: ImageSpec, ctx: dict[str, Any]) -> dict[str, Any]:
    """`DIR/arcbake-build.json`: what the validators and the Packer driver need (no secrets)."""
    return {
        "packer_only": packer_only(spec),
        "ks_version": spec.os.ks_version,
        "vm_name": ctx["vm_name"],
        "variant": spec.os.variant,
        "spec_sha256": ctx["spec_sha256"],
        "k3s_version": spec.k3s.version,
        "k3s_sha256": spec.k3s.sha256.model_dump(),
        "template_name_regex": spec.template_name_regex().pattern,
        "publish": spec.publish.model_dump(mode="json"),
        "rhsm_env": (
            {"org": spec.rhsm.org_env, "activation_key": spec.rhsm.activation_key_env} if spec.rhsm else None
        ),
    }


def guest_path(dest: str) -> str | None:
    """`rootfs/etc/chrony.conf` -> `/etc/chrony.conf`; None for files that do not go into the guest."""
    parts = PurePosixPath(dest).parts
    if parts and parts[0] == "rootfs":
        return "/" + "/".join(parts[1:])
    return None
