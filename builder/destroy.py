"""`builder destroy FLEET`: power off and delete the fleet's VMs, then each emptied cluster's Arc resource.

Plan first (`plan()`), then act (`apply()`): the plan reads every VM of the datacenter once and refuses,
changing nothing, when a VM named in the fleet is a template or is not owned by the fleet (no
`arcbake.fleet` mark of this fleet: someone else's VM with the same name). Owned VMs include a rollout's
replacement (`NAME.rollout`) left by an interrupted `builder rollout`.

A cluster's Arc connected cluster (its extensions and Flux configurations go with it) is deleted once no
VM of that cluster is left after this destroy, unless `--keep-arc`. Every step is idempotent: a VM
already gone is `absent`, a connected cluster already gone (404) is `absent`; an interrupted destroy
resumes by running it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from builder import fleetvms
from builder.azure_arm import ArcClusters, AzureError, AzureSettings, ClusterRef
from builder.fleet import Fleet
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from builder.vsphere._vmomi import vmodl
from builder.vsphere.connection import Session, VSphereError

LOG = logging.getLogger(__name__)


class DestroyRefusedError(VSphereError):
    """The plan found a VM it must not touch; nothing was changed."""


@dataclass
class VmStep:
    """One VM of the plan."""

    name: str
    action: str  # delete | absent | refused
    reason: str = ""
    record: fleetvms.VmRecord | None = field(default=None, repr=False)
    done: str = ""  # deleted | absent | failed: ...


@dataclass
class ArcStep:
    """One cluster's connected cluster in the plan."""

    cluster: str  # the initialising server's VM name
    ref: ClusterRef | None
    action: str  # delete | keep (VMs remain) | keep-arc | none (no Arc)
    reason: str = ""
    done: str = ""


@dataclass
class DestroyPlan:
    """What destroy will do."""

    fleet: str
    vms: list[VmStep]
    arc: list[ArcStep]

    @property
    def refused(self) -> list[VmStep]:
        """VMs the plan refuses to touch."""
        return [s for s in self.vms if s.action == "refused"]

    def check_refused(self) -> None:
        """DestroyRefusedError naming every refused VM (before anything is changed)."""
        if self.refused:
            detail = "; ".join(f"VM {s.name!r} {s.reason}" for s in self.refused)
            raise DestroyRefusedError(f"{detail}; nothing was changed")

    def lines(self) -> list[str]:
        """The plan as text, one line per VM and per connected cluster."""
        out = [f"VM {s.name}: {s.action}" + (f" ({s.reason})" if s.reason else "") for s in self.vms]
        for a in self.arc:
            what = f"Arc {a.ref}" if a.ref else f"cluster of {a.cluster}"
            out.append(f"{what}: {a.action}" + (f" ({a.reason})" if a.reason else ""))
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready plan and outcome."""
        return {
            "fleet": self.fleet,
            "vms": [
                {"name": s.name, "action": s.action, "reason": s.reason, "done": s.done} for s in self.vms
            ],
            "arc": [
                {
                    "cluster": a.cluster,
                    "resource": str(a.ref) if a.ref else None,
                    "action": a.action,
                    "reason": a.reason,
                    "done": a.done,
                }
                for a in self.arc
            ],
        }


def plan(
    session: Session, fleet: Fleet, only: Collection[str] = (), *, keep_arc: bool = False
) -> DestroyPlan:
    """Classify every fleet VM (or those named in `only`) and every cluster; nothing changes."""
    unknown = sorted(set(only) - {v.name for v in fleet.vms})
    if unknown:
        raise ValueError(f"not a VM of fleet {fleet.name!r}: {', '.join(unknown)}")
    dc = inventory.datacenter(session, fleet.placement.datacenter)
    found = fleetvms.by_name(fleetvms.read_all(session, dc))
    chosen = [v for v in fleet.vms if not only or v.name in only]
    steps: list[VmStep] = []
    remaining: set[str] = set()  # fleet VM names that will still exist afterwards
    for vm in fleet.vms:
        records = found.get(vm.name, []) + found.get(vm.name + fleetvms.ROLLOUT_SUFFIX, [])
        if vm not in chosen:
            if records:
                remaining.add(vm.name)
            continue
        if not records:
            steps.append(VmStep(vm.name, "absent", "no such VM"))
            continue
        for rec in records:
            if rec.is_template:
                steps.append(VmStep(rec.name, "refused", "is a template: destroy never deletes a template"))
            elif not rec.owned_by(fleet.name):
                owner = f"fleet {rec.fleet!r}" if rec.fleet else "no arcbake fleet"
                steps.append(VmStep(rec.name, "refused", f"not deployed by this fleet (belongs to {owner})"))
            else:
                steps.append(VmStep(rec.name, "delete", f"{rec.power}, from {rec.source_template}", rec))
        mine = (vm.name, vm.name + fleetvms.ROLLOUT_SUFFIX)
        if any(s.action == "refused" for s in steps if s.name in mine):
            remaining.add(vm.name)
    arc_steps: list[ArcStep] = []
    for root, members in fleetvms.clusters(fleet).items():
        server = members[0]
        arc = next((m.config.arc for m in members if m.config.arc is not None), None)
        ref = ClusterRef(arc.subscription_id, arc.resource_group, arc.cluster_name) if arc else None
        left = sorted(m.name for m in members if m.name in remaining)
        if ref is None:
            arc_steps.append(ArcStep(root, None, "none", "no Arc section"))
        elif left:
            arc_steps.append(ArcStep(root, ref, "keep", f"VMs of the cluster remain: {', '.join(left)}"))
        elif keep_arc:
            arc_steps.append(ArcStep(root, ref, "keep-arc", "--keep-arc: Azure is left alone"))
        else:
            arc_steps.append(ArcStep(root, ref, "delete", f"no VM of cluster {server.name} is left"))
    return DestroyPlan(fleet.name, steps, arc_steps)


def apply(
    plan_: DestroyPlan,
    environ: Mapping[str, str],
    *,
    default_tenant: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> bool:
    """Carry out `plan_` (refused plans raise DestroyRefusedError first); True when every step succeeded.

    Azure credentials are read before any VM is touched, so a missing variable changes nothing.
    """
    plan_.check_refused()
    to_delete = [a for a in plan_.arc if a.action == "delete"]
    settings = AzureSettings.from_env(environ, default_tenant) if to_delete else None
    say = progress or (lambda _msg: None)
    ok = True
    for step in plan_.vms:
        if step.action == "absent":
            step.done = "absent"
            continue
        if step.action != "delete" or step.record is None:
            continue
        try:
            vmops.destroy(step.record.obj, step.name)
            step.done = "deleted"
        except VSphereError as exc:
            if _gone(step.record.obj):
                step.done = "absent"
            else:
                step.done = f"failed: {exc}"
                ok = False
        say(f"VM {step.name}: {step.done}")
    if not ok:
        # A VM of a cluster that could not be deleted keeps its connected cluster for the next run.
        for a in to_delete:
            a.done = "skipped: a VM could not be deleted; run destroy again"
        return False
    if settings is not None:
        with ArcClusters(settings) as arm:
            for a in to_delete:
                if a.ref is None:
                    continue
                try:
                    a.done = "deleted" if arm.delete(a.ref) else "absent"
                except AzureError as exc:
                    a.done = f"failed: {exc}"
                    ok = False
                say(f"Arc {a.ref}: {a.done}")
    return ok


def _gone(obj: Any) -> bool:
    # A VM deleted by someone else between plan and apply: its properties can no longer be read.
    try:
        _ = obj.name
    except vmodl.fault.ManagedObjectNotFound:
        return True
    return False
