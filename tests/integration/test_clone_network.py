"""What deploy writes into simulator clones, rendered by cloud-init's own renderers for Rocky and RHEL
(`cloud-init devel net-convert`, NetworkManager keyfiles and sysconfig ifcfg), with the MAC the simulator
assigned each clone (as vCenter does: sim/vcsim/macs.go): every address is bound to the clone's NIC."""

from __future__ import annotations

import configparser
import ipaddress
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fixtures.vcsim import VcsimHandle

from builder.cli import cli
from builder.fleet import NIC_NAME, load_fleet
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from builder.vsphere._vmomi import vim
from integration.vsphere_helpers import (
    SECRET_ENV,
    cloudinit_decode,
    fleet_file,
    run_cli,
    session_for,
    vm_extra,
    vm_macs,
)

pytestmark = [pytest.mark.integration, pytest.mark.allow_subp("cloud-init")]
# vCenter's VMware OUI allocation: 00:50:56:XX:YY:ZZ, XX = 0x80 + the vCenter Server ID (vSphere 7.0
# Networking, "VMware OUI Allocation"); the simulator's launcher is vCenter ID 0.
VCENTER_MAC = re.compile(r"00:50:56:[89ab][0-9a-f](:[0-9a-f]{2}){2}")
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


def bound_mac(sim: VcsimHandle, name: str) -> str:
    """The MAC the clone's guestinfo.metadata binds its network to, decoded as cloud-init does."""
    nic = cloudinit_decode(vm_extra(sim, name))["metadata"]["network"]["config"]["ethernets"][NIC_NAME]
    return str(nic["match"]["macaddress"])


@pytest.mark.parametrize("example", ["demo-fleet", "ha-fleet"])
def test_renderers_bind_every_address_to_the_clones_nic(
    vcsim: VcsimHandle, tmp_path: Path, example: str
) -> None:
    path = fleet_file(tmp_path, f"net-{example[:4]}", source=example)
    result = CliRunner().invoke(cli, ["deploy", str(path)], env={**vcsim.env(), **SECRET_ENV})
    assert result.exit_code == 0, result.output
    fleet = load_fleet(path)
    macs = vm_macs(vcsim)
    for vm in fleet.vms:
        # The simulator assigned the clone's MAC (vCenter's range, used by no other VM of the inventory:
        # not the template's, not another fleet's), and the metadata binds to that one.
        [mac] = macs[vm.name]
        assert VCENTER_MAC.fullmatch(mac), mac
        assert all(mac not in others for name, others in macs.items() if name != vm.name), mac
        assert bound_mac(vcsim, vm.name) == mac
        network = cloudinit_decode(vm_extra(vcsim, vm.name))["metadata"]["network"]["config"]
        for distro, renderer in RENDERERS:
            out = net_convert(tmp_path / vm.name, network, distro, renderer, mac)
            check_bound(out, renderer, mac, vm)


def test_a_redeploy_keeps_each_clones_mac_and_a_replaced_clone_binds_its_new_one(
    vcsim: VcsimHandle, tmp_path: Path
) -> None:
    path = fleet_file(tmp_path, "net-again")
    assert run_cli(vcsim, "deploy", str(path)).exit_code == 0
    names = [vm.name for vm in load_fleet(path).vms]
    before = {n: (vm_macs(vcsim)[n], vm_extra(vcsim, n)) for n in names}

    again = run_cli(vcsim, "deploy", str(path), "--format", "json")
    assert [v["action"] for v in json.loads(again.stdout)["vms"]] == ["unchanged"] * 3
    assert {n: (vm_macs(vcsim)[n], vm_extra(vcsim, n)) for n in names} == before

    # A whole cluster (deploy replaces no member beside running ones of its cluster), one at a time (the
    # simulator panics on concurrent DestroyTasks, see tests/integration/test_deploy_replace.py).
    changed = fleet_file(tmp_path, "net-again", subst={"0.rocky.pool.ntp.org": "1.rocky.pool.ntp.org"})
    replaced = run_cli(vcsim, "deploy", str(changed), "--replace", "--format", "json", "--concurrency", "1")
    assert replaced.exit_code == 0, replaced.output
    assert [v["action"] for v in json.loads(replaced.stdout)["vms"]] == ["replaced"] * 3
    for name in names:
        [new_mac] = vm_macs(vcsim)[name]
        assert new_mac not in before[name][0] and bound_mac(vcsim, name) == new_mac


def _raw_clone(source: Any, name: str, where: inventory.Placement) -> Any:
    # CloneVM_Task with no device change: what the simulator does to the NIC by itself.
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=where.pool), powerOn=False, template=False)
    return vmops.wait(source.CloneVM_Task(folder=where.folder, name=name, spec=spec), name)


def _first_nic(vm: Any) -> Any:
    devices = vm.config.hardware.device
    return next(d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard))


def test_clones_never_share_a_mac_not_even_from_a_template_with_a_manual_one(
    vcsim: VcsimHandle, tmp_path: Path
) -> None:
    manual = "00:50:56:3f:00:01"
    path = fleet_file(tmp_path, "net-man", template="net-man-tpl")
    placement = load_fleet(path).placement
    with session_for(vcsim) as session:
        where = inventory.placement_of(session, placement)
        source = inventory.vm(session, where.datacenter, "DC0_H0_VM0")
        source_mac = str(_first_nic(source).macAddress)
        # As vCenter: a plain clone's adapter gets a MAC of its own; the source keeps its address.
        tpl = _raw_clone(source, "net-man-tpl", where)
        assert VCENTER_MAC.fullmatch(str(_first_nic(tpl).macAddress)), _first_nic(tpl)
        assert str(_first_nic(source).macAddress) == source_mac
        nic = _first_nic(tpl)
        nic.addressType, nic.macAddress = "manual", manual
        change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)
        vmops.wait(tpl.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[change])), "manual MAC")
        # A manual address is the clone's too, when nothing asks vCenter for another one.
        assert str(_first_nic(_raw_clone(tpl, "net-man-raw", where)).macAddress) == manual

    result = run_cli(vcsim, "deploy", str(path))
    assert result.exit_code == 0, result.output
    macs = vm_macs(vcsim)
    mine = [macs[f"net-man-0{i}"][0] for i in (1, 2, 3)]
    assert len(set(mine)) == 3 and manual not in mine and all(VCENTER_MAC.fullmatch(m) for m in mine), mine
    assert [bound_mac(vcsim, f"net-man-0{i}") for i in (1, 2, 3)] == mine


def test_without_the_mac_binding_networkmanager_names_the_connection_after_the_key(tmp_path: Path) -> None:
    """The defect this replaced: a name glob, which cloud-init's NetworkManager renderer cannot bind."""
    old = {"version": 2, "ethernets": {"nic0": {"match": {"name": "e*"}, "dhcp4": False,
                                                "addresses": ["192.168.50.11/24"]}}}  # fmt: skip
    out = net_convert(tmp_path, old, "rocky", "network-manager", "00:50:56:00:00:01")
    conn = keyfile(out)
    assert conn["connection"]["interface-name"] == "nic0"
    assert "mac-address" not in (conn["ethernet"] if conn.has_section("ethernet") else {})
