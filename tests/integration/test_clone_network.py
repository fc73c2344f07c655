"""What deploy writes into simulator clones, rendered by cloud-init's own renderers for Rocky and RHEL
(`cloud-init devel net-convert`, NetworkManager keyfiles and sysconfig ifcfg), with the MAC the simulator
holds for each clone: every address is bound to the clone's NIC."""

from __future__ import annotations

import configparser
import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fixtures.vcsim import VcsimHandle

from builder.cli import cli
from builder.fleet import NIC_NAME, load_fleet
from integration.vsphere_helpers import SECRET_ENV, cloudinit_decode, fleet_file, vm_extra, vm_macs

pytestmark = [pytest.mark.integration, pytest.mark.allow_subp("cloud-init")]
RENDERERS = [
    ("rocky", "network-manager"),
    ("rhel", "network-manager"),
    ("rocky", "sysconfig"),
    ("rhel", "sysconfig"),
]


def net_convert(tmp: Path, network: dict[str, Any], distro: str, renderer: str, mac: str) -> Path:
    """cloud-init's renderer for `distro` on the v2 config, the NIC `ens192` having `mac`."""
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / f"{distro}-{renderer}.yaml"
    src.write_text(json.dumps(network))
    out = tmp / f"{distro}-{renderer}"
    subprocess.run(
        ["cloud-init", "devel", "net-convert", "-p", str(src), "-k", "yaml", "-D", distro, "-O", renderer,
         "-d", str(out), "-m", f"{NIC_NAME},{mac}"],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return out


def keyfile(out: Path) -> configparser.ConfigParser:
    files = list((out / "etc/NetworkManager/system-connections").glob("*.nmconnection"))
    assert len(files) == 1, files
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(files[0].read_text())
    return parser


def ifcfg(out: Path) -> dict[str, str]:
    files = list((out / "etc/sysconfig/network-scripts").glob("ifcfg-*"))
    assert [f.name for f in files] == [f"ifcfg-{NIC_NAME}"]
    pairs = (line.split("=", 1) for line in files[0].read_text().splitlines() if "=" in line)
    return {k: v.strip('"') for k, v in pairs}


def check_bound(out: Path, renderer: str, mac: str, vm: Any) -> None:
    net = vm.network
    if renderer == "network-manager":
        conn = keyfile(out)
        assert conn["ethernet"]["mac-address"].lower() == mac.lower()
        assert "interface-name" not in conn["connection"]  # bound by MAC, not by a name the NIC may lack
        if net.static:
            assert conn["ipv4"]["method"] == "manual"
            assert conn["ipv4"]["address1"] == str(net.address)
            assert conn["ipv4"]["route1"] == f"0.0.0.0/0,{net.gateway}"
            assert conn["ipv4"]["dns"] == "".join(f"{a};" for a in net.dns)
        else:
            assert conn["ipv4"]["method"] == "auto"
        return
    cfg = ifcfg(out)
    assert cfg["HWADDR"].lower() == mac.lower() and cfg["DEVICE"] == NIC_NAME
    if net.static:
        assert cfg["BOOTPROTO"] in ("none", "static")
        assert cfg["IPADDR"] == str(net.address.ip)
        assert ipaddress.IPv4Network(f"0.0.0.0/{cfg['NETMASK']}").prefixlen == net.address.network.prefixlen
        assert cfg["GATEWAY"] == str(net.gateway)
        assert cfg["DNS1"] == str(net.dns[0])
    else:
        assert cfg["BOOTPROTO"] == "dhcp"


@pytest.mark.parametrize("example", ["demo-fleet", "ha-fleet"])
def test_renderers_bind_every_address_to_the_clones_nic(
    vcsim: VcsimHandle, tmp_path: Path, example: str
) -> None:
    path = fleet_file(tmp_path, f"net-{example[:4]}", source=example)
    result = CliRunner().invoke(cli, ["deploy", str(path)], env={**vcsim.env(), **SECRET_ENV})
    assert result.exit_code == 0, result.output
    fleet = load_fleet(path)
    macs = vm_macs(vcsim, [vm.name for vm in fleet.vms])
    assert len(set(macs.values())) == len(fleet.vms)
    for vm in fleet.vms:
        # The simulator holds the MAC deploy set at clone time, and the metadata binds to that one.
        assert macs[vm.name] == vm.mac
        network = cloudinit_decode(vm_extra(vcsim, vm.name))["metadata"]["network"]["config"]
        for distro, renderer in RENDERERS:
            out = net_convert(tmp_path / vm.name, network, distro, renderer, macs[vm.name])
            check_bound(out, renderer, macs[vm.name], vm)


def test_without_the_mac_binding_networkmanager_names_the_connection_after_the_key(tmp_path: Path) -> None:
    """The defect this replaced: a name glob, which cloud-init's NetworkManager renderer cannot bind."""
    old = {"version": 2, "ethernets": {"nic0": {"match": {"name": "e*"}, "dhcp4": False,
                                                "addresses": ["192.168.50.11/24"]}}}  # fmt: skip
    out = net_convert(tmp_path, old, "rocky", "network-manager", "00:50:56:00:00:01")
    conn = keyfile(out)
    assert conn["connection"]["interface-name"] == "nic0"
    assert "mac-address" not in (conn["ethernet"] if conn.has_section("ethernet") else {})
