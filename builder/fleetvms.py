"""The VMs of a datacenter as Day 2 commands need them, in one PropertyCollector read.

`builder deploy` marks what it clones with non-guestinfo extraConfig keys (invisible to the guest):
`arcbake.fleet` (the fleet name) and `arcbake.source.template` / `.template_uuid`. A VM is *owned* by a
fleet when it is not a template and carries that fleet's mark: destroy, rollout and rotate act on owned
VMs only, never on a template or on a VM that merely has a fleet VM's name.

`clusters()` gives the fleet's K3s clusters (`builder.topology`) with their VMs: the initialising
server's `arc` section names the cluster's one Arc connected cluster.
"""

from __future__ import annotations

from typing import Any

from builder import topology
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


def clusters(fleet: Fleet) -> dict[str, list[FleetVM]]:
    """The fleet's K3s clusters (`topology.clusters`), by initialising server name, each with its VMs:
    the initialising server, the servers joining it, then the agents."""
    by_name = {v.name: v for v in fleet.vms}
    return {c.name: [by_name[n] for n in (*c.servers, *c.agents)] for c in topology.clusters(fleet.vms)}
