"""Shared helpers for the vSphere integration tests: fleet files and direct pyvmomi reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from fixtures.vcsim import VcsimHandle

from builder.cli import cli
from builder.status import parse_status
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from builder.vsphere._vmomi import vim
from builder.vsphere.connection import Credentials, Session, connect

REPO = Path(__file__).resolve().parents[2]

SECRET_ENV = {"ARC_SP_SECRET": "sp-Secret-Value-7f3a9", "K3S_TOKEN": "k3s-Token-Value-c81e2"}


def fleet_file(
    tmp_path: Path,
    prefix: str,
    *,
    template: str = "DC0_H0_VM0",
    agents: int = 2,
    subst: dict[str, str] | None = None,
    source: str = "demo-fleet",
) -> Path:
    """An example fleet (default: the demo) with unique VM names (`prefix-01`, ...), cloning `template`,
    text substitutions."""
    text = (REPO / "examples" / f"{source}.yaml").read_text()
    text = re.sub(r"^template: .*$", f"template: {template}", text, flags=re.M)
    text = text.replace("edge-demo-0", f"{prefix}-0").replace("edge-ha-0", f"{prefix}-0")
    for old, new in (subst or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    if agents > 2:
        extra = "".join(
            f"  - name: {prefix}-{n:02d}\n    role: agent\n    network: {{dhcp: true}}\n"
            for n in range(4, agents + 2)
        )
        text += extra
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(text)
    return path


CLOUDINIT_DECODE = r"""
import json, sys
from cloudinit.sources.DataSourceVMware import guestinfo_envvar, load_json_or_yaml, process_metadata
md = process_metadata(load_json_or_yaml(guestinfo_envvar("metadata")))
print(json.dumps({
    "metadata": md,
    "userdata": guestinfo_envvar("userdata"),
    "config": guestinfo_envvar("arcbake.config"),
    "secrets": guestinfo_envvar("arcbake.secrets"),
}))
"""


def cloudinit_decode(extra: dict[str, str]) -> dict[str, Any]:
    """Decode guestinfo exactly as cloud-init's VMware datasource does (its VMX_GUESTINFO_* transport)."""
    env = {"PATH": "/usr/bin:/bin", "VMX_GUESTINFO": "1"}
    for key, value in extra.items():
        if key.startswith("guestinfo."):
            env[("vmx." + key).upper().replace(".", "_")] = value
    out = subprocess.run(
        ["/usr/bin/python3", "-c", CLOUDINIT_DECODE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    decoded: dict[str, Any] = json.loads(out.stdout)
    return decoded


# The Arc connected cluster of the demo fleet (examples/demo-fleet.yaml) as the ARM double names it.
DEMO_SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
DEMO_ARC_ID = (
    f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/rg-edge-demo/providers/Microsoft.Kubernetes/"
    "connectedClusters/edge-demo"
)


def azure_env(arm_url: str, ca_file: Path) -> dict[str, str]:
    """builder's Azure environment for the ARM double with the harness's service principal."""
    from doubles.harness import GUID_CLIENT, GUID_TENANT, SP_SECRET

    return {
        "AZURE_TENANT_ID": GUID_TENANT,
        "AZURE_CLIENT_ID": GUID_CLIENT,
        "AZURE_CLIENT_SECRET": SP_SECRET,
        "ARCBAKE_ARM_ENDPOINT": arm_url,
        "ARCBAKE_AZURE_AUTHORITY": arm_url,
        "ARCBAKE_AZURE_CA_BUNDLE": str(ca_file),
    }


def run_cli(sim: VcsimHandle, *args: str, **env: str) -> Result:
    """`builder ARGS` in process against `sim`, with the fleet secrets and `env` in the environment."""
    return CliRunner().invoke(cli, list(args), env={**sim.env(), **SECRET_ENV, **env}, catch_exceptions=False)


def deployed(sim: VcsimHandle, tmp_path: Path, prefix: str) -> tuple[Path, list[str]]:
    """The demo fleet (1 server + 2 agents) deployed as `prefix-01..03`: its file and VM names."""
    path = fleet_file(tmp_path, prefix)
    result = run_cli(sim, "deploy", str(path))
    assert result.exit_code == 0, result.output
    return path, [f"{prefix}-01", f"{prefix}-02", f"{prefix}-03"]


def session_for(sim: VcsimHandle) -> Session:
    return connect(Credentials.from_env(sim.env()))


def vm_extra(sim: VcsimHandle, name: str) -> dict[str, str]:
    with session_for(sim) as s:
        dc = inventory.datacenter(s, "DC0")
        return vmops.extra_config(inventory.vm(s, dc, name))


def vm_raw_keys(sim: VcsimHandle, name: str) -> list[str]:
    with session_for(sim) as s:
        dc = inventory.datacenter(s, "DC0")
        return [o.key for o in inventory.vm(s, dc, name).config.extraConfig]


def vm_macs(sim: VcsimHandle) -> dict[str, list[str]]:
    """The MACs of every network adapter of every VM and template of DC0, by VM name, as the simulator
    holds them (one list per VM: the simulator allows duplicate names)."""
    with session_for(sim) as s:
        dc = inventory.datacenter(s, "DC0")
        out: dict[str, list[str]] = {}
        for _obj, props in inventory.datacenter_vms(s, dc, ["name", "config.hardware.device"]):
            devices = props.get("config.hardware.device") or []
            nics = [d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
            out.setdefault(str(props["name"]), []).extend(str(n.macAddress).lower() for n in nics)
        return out


def vm_info(sim: VcsimHandle, name: str) -> dict[str, Any]:
    with session_for(sim) as s:
        dc = inventory.datacenter(s, "DC0")
        found = inventory.vms_by_name(s, dc, [name]).get(name, [])
        return {
            "count": len(found),
            "moids": [v._moId for v in found],
            "power": [str(v.runtime.powerState) for v in found],
        }


def set_extra(sim: VcsimHandle, name: str, values: dict[str, str]) -> None:
    """Write extraConfig keys of VM `name`: what a guest's `vmware-rpctool info-set` shows through the API."""
    with session_for(sim) as s:
        vm = inventory.vm(s, inventory.datacenter(s, "DC0"), name)
        vmops.set_extra_config(vm, values, "test guestinfo")


def builder_until(
    args: list[str], env: dict[str, str], marker: str, timeout: float = 120
) -> tuple[Any, list[str]]:
    """Start the `builder` console script; read its stderr until a line holds `marker` (or it ends).

    Returns the running process and the stderr lines read so far, for a test that interrupts it there.
    """
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "builder"), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if marker in line or not line:
            break
    return proc, seen


def reported_ready(sim: VcsimHandle, server: str, node: str, timeout: float = 30.0) -> None:
    """Wait until `server`'s status lists `node` in `nodes_ready`."""
    deadline = time.monotonic() + timeout
    while True:
        status = parse_status(vm_extra(sim, server))[1]
        if status is not None and node in status.nodes_ready:
            return
        assert time.monotonic() < deadline, f"{server} never reported {node} Ready: {status}"
        time.sleep(0.05)
