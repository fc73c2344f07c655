"""Operations on one VM: tasks, extraConfig (guestinfo) read and write, clone, power, template, destroy.

extraConfig on the simulator: reconfiguring an existing key appends a duplicate entry instead of
replacing it (a real vCenter replaces it). Readers here therefore take the *last* entry of a key, and
writers read back what they wrote, so the same code is right on both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from builder.vsphere._vmomi import vim
from builder.vsphere.connection import VSphereError, fault_message
from builder.vsphere.inventory import Placement

LOG = logging.getLogger(__name__)

TASK_TIMEOUT = 1800.0


def wait(task: Any, what: str, timeout: float = TASK_TIMEOUT) -> Any:
    """Wait for a vSphere task; raise a one-line VSphereError saying `what` failed and why."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        info = task.info
        state = str(info.state)
        if state == "success":
            return info.result
        if state == "error":
            raise VSphereError(f"{what}: {fault_message(info.error) if info.error else 'task failed'}")
        if time.monotonic() > deadline:
            raise VSphereError(f"{what}: task did not finish within {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def extra_config(vm: Any) -> dict[str, str]:
    """The VM's extraConfig as a mapping; for a duplicated key the last entry wins (simulator)."""
    out: dict[str, str] = {}
    config = vm.config
    for option in (config.extraConfig if config else None) or []:
        out[str(option.key)] = "" if option.value is None else str(option.value)
    return out


def option_values(values: Mapping[str, str]) -> list[Any]:
    """extraConfig entries for a ConfigSpec."""
    return [vim.option.OptionValue(key=k, value=v) for k, v in values.items()]


def set_extra_config(vm: Any, values: Mapping[str, str], what: str) -> None:
    """Write extraConfig keys and check, by reading back, that each now holds the new value."""
    spec = vim.vm.ConfigSpec(extraConfig=option_values(values))
    wait(vm.ReconfigVM_Task(spec=spec), what)
    current = extra_config(vm)
    wrong = [k for k, v in values.items() if current.get(k) != v]
    if wrong:
        raise VSphereError(f"{what}: the VM did not keep {', '.join(sorted(wrong))}")


def power_on(vm: Any, name: str) -> None:
    """Power on (a clone spec's powerOn is ignored by the simulator, so this is always explicit)."""
    if str(vm.runtime.powerState) == "poweredOn":
        return
    wait(vm.PowerOnVM_Task(), f"powering on VM {name!r}")


def power_off(vm: Any, name: str) -> None:
    """Power off hard (used before destroying or marking as template)."""
    if str(vm.runtime.powerState) == "poweredOff":
        return
    wait(vm.PowerOffVM_Task(), f"powering off VM {name!r}")


def destroy(vm: Any, name: str) -> None:
    """Power off and delete the VM with its disks."""
    if not vm.config or not vm.config.template:
        power_off(vm, name)
    wait(vm.Destroy_Task(), f"deleting VM {name!r}")


def _nic_change(source: Any, network: Any) -> list[Any]:
    # Point the clone's first NIC at `network` (a standard port group or a distributed one).
    nics = [d for d in source.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    if not nics:
        raise VSphereError(f"template {source.name!r} has no network adapter to attach to {network.name!r}")
    nic = nics[0]
    if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
        nic.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(
                portgroupKey=network.key, switchUuid=network.config.distributedVirtualSwitch.uuid
            )
        )
    else:
        nic.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            network=network, deviceName=network.name
        )
    return [
        vim.vm.device.VirtualDeviceSpec(operation=vim.vm.device.VirtualDeviceSpec.Operation.edit, device=nic)
    ]


def clone(
    source: Any,
    name: str,
    where: Placement,
    extra: Mapping[str, str],
    *,
    template: bool = False,
    annotation: str | None = None,
) -> Any:
    """Clone `source` to a new VM `name` at `where`, with extraConfig `extra` set in the same call."""
    relocate = vim.vm.RelocateSpec(pool=where.pool)
    if where.datastore is not None:
        relocate.datastore = where.datastore
    if where.host is not None:
        relocate.host = where.host
    config = vim.vm.ConfigSpec(extraConfig=option_values(extra))
    if annotation is not None:
        config.annotation = annotation
    if where.network is not None:
        config.deviceChange = _nic_change(source, where.network)
    spec = vim.vm.CloneSpec(location=relocate, config=config, powerOn=False, template=template)
    return wait(
        source.CloneVM_Task(folder=where.folder, name=name, spec=spec), f"cloning {source.name!r} to {name!r}"
    )
