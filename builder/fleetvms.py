"""The VMs of a datacenter as Day 2 commands need them, in one PropertyCollector read.

`builder deploy` marks what it clones with non-guestinfo extraConfig keys (invisible to the guest):
`arcbake.fleet` (the fleet name) and `arcbake.source.template` / `.template_uuid`. A VM is *owned* by a
fleet when it is not a template and carries that fleet's mark: destroy, rollout and rotate act on owned
VMs only, never on a template or on a VM that merely has a fleet VM's name.

The fleet-to-cluster mapping (which VMs make up one K3s cluster and its one Arc connected cluster) also
lives here: a VM belongs to the cluster of the server it joins (`server:`), followed to the initialising
server, whose `arc` section names the connected cluster.
"""

from __future__ import annotations

from typing import Any

from builder.deploy import KEY_FLEET, KEY_IDENTITY, KEY_SOURCE_TEMPLATE, KEY_SOURCE_UUID
from builder.fleet import Fleet, FleetVM
from builder.vsphere import vm as vmops
from builder.vsphere.connection import Session
from builder.vsphere.inventory import datacenter_vms

# Name of a replacement VM while `builder rollout` brings it up beside the VM it replaces.
ROLLOUT_SUFFIX = ".rollout"
_PROPS = [*vmops.ROW_PROPS, "config.createDate"]


class VmRecord(vmops.VmRow):
    """One VM or template as read in bulk, with what deploy recorded on it."""

    @property
    def fleet(self) -> str | None:
        """The fleet that deployed this VM (None: not deployed by arcbake)."""
        return self.extra.get(KEY_FLEET) or None

    @property
    def source_template(self) -> str | None:
        """The template this VM was cloned from, as deploy recorded it."""
        return self.extra.get(KEY_SOURCE_TEMPLATE) or None

    @property
    def source_uuid(self) -> str | None:
        """The instance UUID of the template this VM was cloned from."""
        return self.extra.get(KEY_SOURCE_UUID) or None

    @property
    def complete(self) -> bool:
        """True when deploy finished with it (the identity is stamped last)."""
        return bool(self.extra.get(KEY_IDENTITY))

    def owned_by(self, fleet: str) -> bool:
        """True for a VM (never a template) carrying `fleet`'s mark."""
        return not self.is_template and self.fleet == fleet


def read_all(session: Session, dc: Any) -> list[VmRecord]:
    """Every VM and template of `dc` with its extraConfig (the last entry of a duplicated key wins, as
    `vm.extra_config` reads it), in one PropertyCollector query."""
    return [VmRecord.from_props(obj, props) for obj, props in datacenter_vms(session, dc, _PROPS)]


def by_name(records: list[VmRecord]) -> dict[str, list[VmRecord]]:
    """Records grouped by VM name (vSphere allows duplicate names)."""
    out: dict[str, list[VmRecord]] = {}
    for rec in records:
        out.setdefault(rec.name, []).append(rec)
    return out


def initialising_server(fleet: Fleet, vm: FleetVM) -> FleetVM:
    """The server at the root of `vm`'s cluster (an agent's or joining server's `server:`, followed)."""
    names = {v.name: v for v in fleet.vms}
    seen = {vm.name}
    while vm.server is not None and vm.server in names and vm.server not in seen:
        vm = names[vm.server]
        seen.add(vm.name)
    return vm


def clusters(fleet: Fleet) -> dict[str, list[FleetVM]]:
    """The fleet's clusters, by initialising server name, each with its VMs (servers first, fleet order)."""
    out: dict[str, list[FleetVM]] = {}
    for vm in fleet.vms:
        out.setdefault(initialising_server(fleet, vm).name, []).append(vm)
    for members in out.values():
        members.sort(key=lambda v: 0 if v.role.value == "server" else 1)
    return out
