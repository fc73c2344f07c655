"""Operations on one VM: tasks, extraConfig (guestinfo) read and write, clone, power, template, destroy.

extraConfig: vCenter replaces a key that is set again and removes a key set to an empty value. govmomi
0.24's simulator (Debian 12) appends a duplicate entry instead and removes nothing; the bundled launcher
(sim/vcsim/extraconfig.go) applies vCenter's rules after each reconfiguration, as vcsim itself does from
govmomi v0.31.0. Readers here still take the *last* entry of a key and writers read back what they wrote,
so the same code is right on a simulator without that fix too (except that it cannot remove a key).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from builder.vsphere import inventory, rawprops
from builder.vsphere._vmomi import vim
from builder.vsphere.connection import Session, VSphereError, fault_message
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


def options(entries: Iterable[Any] | Mapping[str, str] | None) -> dict[str, str]:
    """extraConfig entries as a mapping; for a duplicated key the last entry wins (simulator). A mapping
    (what `rawprops` reads) is taken as it is."""
    if isinstance(entries, Mapping):
        return dict(entries)
    out: dict[str, str] = {}
    option: Any
    for option in entries or []:
        out[str(option.key)] = "" if option.value is None else str(option.value)
    return out


def extra_config(vm: Any) -> dict[str, str]:
    """The VM's extraConfig as a mapping (reads the whole `config`: for many VMs use `read_rows`)."""
    config = vm.config
    return options(config.extraConfig if config else None)


@dataclass
class VmRow:
    """One VM or template as read in bulk: what status, deploy and the Day 2 commands need."""

    obj: Any
    name: str
    is_template: bool
    extra: dict[str, str]
    power: str
    instance_uuid: str
    created: str = ""

    @classmethod
    def from_props(cls, obj: Any, props: Mapping[str, Any]) -> Self:
        """A row from PropertyCollector properties (any of ROW_PROPS; missing ones read as empty)."""
        created: Any = props.get("config.createDate")
        return cls(
            obj=obj,
            name=str(props.get("name", "")),
            is_template=bool(props.get("config.template")),
            extra=options(props.get("config.extraConfig")),
            power=str(props.get("runtime.powerState", "")),
            instance_uuid=str(props.get("config.instanceUuid") or ""),
            created=created.isoformat() if hasattr(created, "isoformat") else str(created or ""),
        )


ROW_PROPS = ("name", "config.template", "config.extraConfig", "runtime.powerState", "config.instanceUuid")


def read_rows(
    session: Session,
    by_name: Mapping[str, list[Any]],
    names: Iterable[str],
    props: Sequence[str] = ROW_PROPS,
    extra_keys: Collection[str] | None = None,
) -> dict[str, list[VmRow]]:
    """`VmRow`s of the VMs called `names` (from `inventory.vms_by_name`), in one PropertyCollector query.

    Ask for no more `props` than needed: with 1,000 VMs, decoding the answer is most of the time. With
    `extra_keys`, a row's `extra` holds those extraConfig keys only, and the answer is read by `rawprops`
    (several times faster than pyVmomi's decoder; an answer it does not decode is asked for again)."""
    wanted = {n: by_name.get(n, []) for n in names}
    objs = [o for found in wanted.values() for o in found]
    found: dict[Any, dict[str, Any]] = {}
    if extra_keys is not None and objs:
        try:
            found = rawprops.vm_properties(session, objs, props, extra_keys)
        except rawprops.Unsupported as exc:
            LOG.debug("reading through pyVmomi instead: %s", exc)
            found = {
                obj: {**values, "config.extraConfig": _only(values.get("config.extraConfig"), extra_keys)}
                for obj, values in inventory.properties(session, objs, vim.VirtualMachine, props).items()
            }
    else:
        found = inventory.properties(session, objs, vim.VirtualMachine, props)
    out: dict[str, list[VmRow]] = {}
    for name, objs_named in wanted.items():
        # A VM deleted between the two queries is left out (reported missing).
        rows = [VmRow.from_props(o, {"name": name, **found[o]}) for o in objs_named if o in found]
        if rows:
            out[name] = rows
    return out


def _only(entries: Iterable[Any] | None, keys: Collection[str]) -> dict[str, str]:
    return {k: v for k, v in options(entries).items() if k in keys}


def option_values(values: Mapping[str, str]) -> list[Any]:
    """extraConfig entries for a ConfigSpec."""
    return [vim.option.OptionValue(key=k, value=v) for k, v in values.items()]


def write_extra_config(vm: Any, values: Mapping[str, str], what: str) -> None:
    """Write extraConfig keys without reading them back (a later `set_extra_config` checks them: `kept`)."""
    wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=option_values(values))), what)


def _reconfigure_extra(vm: Any, values: Mapping[str, str], what: str) -> tuple[Any, dict[str, str]]:
    write_extra_config(vm, values, what)
    config = vm.config
    return config, options(config.extraConfig if config else None)


def set_extra_config(
    vm: Any, values: Mapping[str, str], what: str, kept: Mapping[str, str] | None = None
) -> Any:
    """Write extraConfig keys, check by reading back that each holds the new value, and that the keys of
    `kept` (written earlier without a read-back) hold theirs; the read `config`."""
    config, current = _reconfigure_extra(vm, values, what)
    wrong = [k for k, v in {**(kept or {}), **values}.items() if current.get(k) != v]
    if wrong:
        raise VSphereError(f"{what}: the VM did not keep {', '.join(sorted(wrong))}")
    return config


def remove_extra_config(vm: Any, keys: Iterable[str], what: str) -> None:
    """Remove extraConfig keys from the VM's configuration (its .vmx), checked by reading back.

    vSphere removes a key that is set to an empty string; the bundled simulator does the same (its
    launcher, sim/vcsim/extraconfig.go, applies vCenter's rule that govmomi 0.24 lacks).
    """
    keys = list(keys)
    _, current = _reconfigure_extra(vm, dict.fromkeys(keys, ""), what)
    kept = [k for k in keys if current.get(k)]
    if kept:
        raise VSphereError(f"{what}: the VM still holds {', '.join(sorted(kept))}")


def power_on(vm: Any, name: str, *, known_off: bool = False) -> None:
    """Power on (a clone spec's powerOn is ignored by the simulator, so this is always explicit).

    `known_off`: the caller made the VM powered off (a fresh clone), so its power state is not read."""
    if not known_off and str(vm.runtime.powerState) == "poweredOn":
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


def rename(vm: Any, old: str, new: str) -> None:
    """Rename the VM (its files keep their names; vSphere renames only the inventory object)."""
    wait(vm.Rename_Task(newName=new), f"renaming VM {old!r} to {new!r}")


@dataclass(frozen=True)
class CloneSource:
    """What every clone of one source needs, read once: its name, its first NIC and that NIC's backing
    on the target network (None: the network is left as the source has it)."""

    obj: Any
    name: str
    nic: Any | None
    backing: Any | None


def clone_source(obj: Any, name: str, devices: Iterable[Any] | None, network: Any | None) -> CloneSource:
    """A `CloneSource` from the source's name and devices (already read) and the target network."""
    nics = [d for d in devices or [] if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    if network is not None and not nics:
        raise VSphereError(f"template {name!r} has no network adapter to attach to {network.name!r}")
    return CloneSource(obj, name, nics[0] if nics else None, _backing(network))


def _backing(network: Any | None) -> Any | None:
    # A NIC backing on `network` (a standard port group or a distributed one); read once per deploy.
    if network is None:
        return None
    if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(
                portgroupKey=network.key, switchUuid=network.config.distributedVirtualSwitch.uuid
            )
        )
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(network=network, deviceName=network.name)


def _nic_change(source: CloneSource) -> list[Any]:
    # The clone's first NIC: on the target network, and with a MAC vCenter assigns to this clone: type
    # "assigned" and no address (as terraform-provider-vsphere resets a NIC to vCenter's allocation), so a
    # template whose NIC has a manual MAC does not hand it to every clone. vCenter keeps the MAC unique
    # within itself; deploy reads it from the clone (`first_nic_mac`). A copy per clone: the source's
    # device stays as read.
    if source.nic is None:
        return []
    nic = copy.deepcopy(source.nic)
    if source.backing is not None:
        nic.backing = source.backing
    nic.addressType = vim.vm.device.VirtualEthernetCardOption.MacTypes.assigned
    nic.macAddress = None
    return [
        vim.vm.device.VirtualDeviceSpec(operation=vim.vm.device.VirtualDeviceSpec.Operation.edit, device=nic)
    ]


def clone(
    source: Any | CloneSource,
    name: str,
    where: Placement,
    extra: Mapping[str, str],
    *,
    template: bool = False,
    annotation: str | None = None,
) -> Any:
    """Clone `source` to a new VM `name` at `where`, with extraConfig `extra` set in the same call; its
    first NIC gets a MAC from vCenter (read it with `first_nic_mac`).

    Pass a `CloneSource` when cloning the same source many times: a bare VM object is read again here.
    """
    if not isinstance(source, CloneSource):
        source = clone_source(source, source.name, source.config.hardware.device, where.network)
    relocate = vim.vm.RelocateSpec(pool=where.pool)
    if where.datastore is not None:
        relocate.datastore = where.datastore
    if where.host is not None:
        relocate.host = where.host
    config = vim.vm.ConfigSpec(extraConfig=option_values(extra))
    if annotation is not None:
        config.annotation = annotation
    device_change = _nic_change(source)
    if device_change:
        config.deviceChange = device_change
    spec = vim.vm.CloneSpec(location=relocate, config=config, powerOn=False, template=template)
    return wait(
        source.obj.CloneVM_Task(folder=where.folder, name=name, spec=spec),
        f"cloning {source.name!r} to {name!r}",
    )


def first_nic_mac(session: Session, vm: Any, name: str) -> str:
    """The MAC of VM `name`'s first network adapter, in one PropertyCollector read of its devices."""
    props = inventory.properties(session, [vm], vim.VirtualMachine, ["config.hardware.device"]).get(vm)
    if props is None:
        raise VSphereError(f"VM {name!r} was deleted while deploying")
    devices = props.get("config.hardware.device") or []
    nics = [d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    if not nics or not nics[0].macAddress:
        raise VSphereError(f"VM {name!r} has no network adapter with a MAC address to bind its network to")
    return str(nics[0].macAddress).lower()
