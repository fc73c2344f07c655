"""`builder deploy FLEET`: clone the fleet's VMs from its template, write the guestinfo contract, power on.

Plan first, then act: every VM is classified before anything changes, so a conflict (a VM that exists
with a different configuration, without `--replace`) stops the deploy with nothing done.

- missing VM          -> clone (guestinfo written in the clone's own ConfigSpec; its NIC gets a MAC from
                         vCenter), read that MAC and write `guestinfo.metadata` bound to it, power on,
                         then stamp `arcbake.identity`; a failure after the clone deletes the half-made VM.
- same identity       -> unchanged (reported, not touched; but once the clone reports past `metadata`,
                         `guestinfo.arcbake.secrets` is removed from its configuration, as status does).
- other identity      -> error, or with `--replace` delete and clone again; but only a whole K3s cluster
                         (or one whose other VMs do not exist): a member replaced beside live ones of its
                         cluster would start a second etcd cluster (the initialising server: `cluster-init`,
                         no etcd data) or be refused its node name (K3s holds the old machine's node
                         password). `builder rollout` onto the same template replaces them safely; deploy
                         refuses (`_partial_replacements`), before changing anything.
- a template, or the clone source itself, under a fleet VM's name -> error, even with `--replace`:
                         deploy never deletes or reconfigures a template.

The identity is a sha256 of the template name, placement and every guestinfo payload except secret
values (the references count) and the MAC (vCenter's, read at clone time: a VM deployed again unchanged
keeps its identity without its MAC being read or set); it lives in a non-guestinfo extraConfig key,
invisible to the guest.
Clones run on a bounded thread pool (`--concurrency`), sharing one vSphere session.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from builder import topology
from builder.events import NULL, Recorder
from builder.fleet import (
    Fleet,
    FleetError,
    FleetVM,
    resolve_secrets,
    secrets_json,
)
from builder.guestinfo import encode_keys
from builder.status import parse_status, remove_secrets, secrets_to_remove
from builder.template_names import newest_match, placeholders
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from builder.vsphere._vmomi import vim
from builder.vsphere.connection import TRANSPORT_ERRORS, NotFoundError, Session, VSphereError, lost
from firstboot import contract
from firstboot.located_yaml import Issue

LOG = logging.getLogger(__name__)

KEY_IDENTITY = "arcbake.identity"
KEY_FLEET = "arcbake.fleet"
KEY_SOURCE_TEMPLATE = "arcbake.source.template"
KEY_SOURCE_UUID = "arcbake.source.template_uuid"
DEFAULT_CONCURRENCY = 4


@dataclass
class VmResult:
    """What deploy did to one VM."""

    name: str
    action: str  # cloned | replaced | unchanged | failed | skipped
    message: str = ""
    moid: str | None = None
    instance_uuid: str | None = None
    seconds: float = 0.0


@dataclass
class DeployReport:
    """The outcome of a deploy."""

    fleet: str
    template: str
    results: list[VmResult] = field(default_factory=list)
    max_in_flight: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no VM failed."""
        return all(r.action != "failed" for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no secret values: only names, actions and ids)."""
        return {
            "fleet": self.fleet,
            "template": self.template,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "max_in_flight": self.max_in_flight,
            "vms": [
                {
                    "name": r.name,
                    "action": r.action,
                    "message": r.message,
                    "moid": r.moid,
                    "instance_uuid": r.instance_uuid,
                    "seconds": round(r.seconds, 3),
                }
                for r in self.results
            ],
        }


class DeployConflictError(VSphereError):
    """VMs exist with a different configuration and `--replace` was not given."""


def guestinfo_values(vm: FleetVM, secrets: contract.OnboardingSecrets) -> dict[str, str]:
    """The guestinfo keys of the contract written in the clone's own spec (all but `guestinfo.metadata`,
    which needs the clone's MAC: `metadata_values`), each `gzip+base64` with its `.encoding` key."""
    payloads = {
        contract.KEY_USERDATA: vm.userdata(),
        contract.KEY_CONFIG: vm.config_json(),
        contract.KEY_SECRETS: secrets_json(secrets),
    }
    return encode_keys(payloads)


def metadata_values(vm: FleetVM, mac: str) -> dict[str, str]:
    """`guestinfo.metadata` (+ `.encoding`) for the clone whose NIC has `mac`."""
    return encode_keys({contract.KEY_METADATA: json.dumps(vm.metadata(mac), sort_keys=True)})


@dataclass
class _Plan:
    vm: FleetVM
    identity: str
    existing: vmops.VmRow | None
    action: str  # clone | replace | unchanged | conflict
    reason: str = ""


class _InFlight:
    """Counts concurrent clone operations (the figure tests and the bench check against --concurrency)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.max = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.max = max(self.max, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def _plan(
    session: Session, names: dict[str, list[Any]], source: vmops.CloneSource, fleet: Fleet, replace: bool
) -> list[_Plan]:
    # Every fleet VM that exists, in one PropertyCollector query ("already deployed?").
    existing = vmops.read_rows(session, names, [v.name for v in fleet.vms])
    plans: list[_Plan] = []
    for vm in fleet.vms:
        identity = vm.identity(fleet.template, fleet.placement)
        found = existing.get(vm.name, [])
        if not found:
            plans.append(_Plan(vm, identity, None, "clone"))
            continue
        untouchable = [r for r in found if r.is_template or r.obj == source.obj]
        if untouchable:
            # Even with --replace: deleting it would delete the source of every clone (issue 8 repro).
            kind = "the fleet's clone source" if untouchable[0].obj == source.obj else "a template"
            why = f"is {kind}; deploy never deletes or changes a template (rename the VM in the fleet file)"
            plans.append(_Plan(vm, identity, None, "conflict", why))
            continue
        if len(found) > 1:
            plans.append(_Plan(vm, identity, None, "conflict", f"{len(found)} VMs are named {vm.name!r}"))
            continue
        row = found[0]
        stored = row.extra.get(KEY_IDENTITY)
        if stored == identity:
            plans.append(_Plan(vm, identity, row, "unchanged"))
        elif replace:
            plans.append(_Plan(vm, identity, row, "replace"))
        else:
            source_name = row.extra.get(KEY_SOURCE_TEMPLATE)
            if not stored:
                why = "exists but was not deployed by arcbake (or an earlier deploy stopped half-way)"
            elif source_name and source_name != fleet.template:
                why = (
                    f"exists, cloned from template {source_name!r} "
                    f"(the fleet now resolves to {fleet.template!r})"
                )
            else:
                why = "exists with a different configuration"
            plans.append(_Plan(vm, identity, row, "conflict", why))
    return plans


def _partial_replacements(plans: list[_Plan], fleet: Fleet) -> list[str]:
    """Why `--replace` may not go ahead: per K3s cluster, the members it would replace while others of the
    cluster exist and stay (`unchanged`). A replacement is a new machine with no etcd data under the old
    node name: beside live members, the initialising server's `cluster-init` starts a second etcd cluster
    (k3s-io/k3s `pkg/etcd/etcd.go` `Start`: no data and no `--server` -> new cluster) and any member is
    refused its name, whose node password the cluster holds for the old machine (`pkg/nodepassword`).
    `builder rollout` handles both (joins a survivor, deletes the old Node first); replacing every
    member together makes a fresh cluster, where `cluster-init` is right."""
    action = {pl.vm.name: pl.action for pl in plans}
    out = []
    for cluster in topology.clusters(fleet.vms):
        members = (*cluster.servers, *cluster.agents)
        replaced = [n for n in members if action.get(n) == "replace"]
        staying = [n for n in members if action.get(n) == "unchanged"]
        if replaced and staying:
            out.append(
                f"{cluster.describe()}: --replace would replace {_names(replaced)} while "
                f"{_names(staying)} of the same cluster keep running (a second etcd cluster, or a node name "
                f"K3s refuses); use `builder rollout --template {fleet.template}`, which replaces the "
                "changed VMs of a live cluster one at a time, or change the whole cluster so that all its "
                "VMs are replaced together"
            )
    return out


def _names(names: list[str]) -> str:
    return ("VM " if len(names) == 1 else "VMs ") + ", ".join(repr(n) for n in names)


def deploy(
    fleet: Fleet,
    session: Session,
    environ: Mapping[str, str],
    *,
    replace: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    recorder: Recorder = NULL,
) -> DeployReport:
    """Deploy `fleet`; raise FleetError (secrets), NotFoundError/VSphereError (placement, conflicts).

    Each VM's clone and power-on are steps of `recorder` (events file with `vm`, progress display)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    started = time.monotonic()
    secrets = resolve_secrets(fleet, environ)
    where = inventory.placement_of(session, fleet.placement)
    # Every VM and template name of the datacenter, once: the template and the fleet's VMs come from it.
    names = inventory.vms_by_name(session, where.datacenter)
    template_name = resolve_template(names, fleet.template, where.datacenter)
    template, source_uuid, template_extra = read_template(session, names, template_name, where)
    problems = topology.profile_problems(fleet.vms, template_extra.get(topology.PROFILE_KEY), template_name)
    problems += topology.network_problems(fleet.vms, template_extra.get(topology.NETWORK_KEY), template_name)
    if problems:
        raise FleetError([Issue(str(fleet.path), None, "vms", p) for p in problems])
    fleet = dataclasses.replace(fleet, template=template_name)
    plans = _plan(session, names, template, fleet, replace)
    conflicts = [pl for pl in plans if pl.action == "conflict"]
    if conflicts:
        detail = "; ".join(f"VM {pl.vm.name!r} {pl.reason}" for pl in conflicts)
        raise DeployConflictError(f"{detail} (use --replace to delete and clone again); nothing was changed")
    partial = _partial_replacements(plans, fleet)
    if partial:
        raise DeployConflictError("; ".join(partial) + "; nothing was changed")

    report = DeployReport(fleet.name, fleet.template)
    in_flight = _InFlight()
    marks = fleet_marks(fleet.name, template_name, source_uuid)

    def one(plan: _Plan) -> VmResult:
        t0 = time.monotonic()
        with in_flight:
            try:
                guestinfo = guestinfo_values(plan.vm, secrets[plan.vm.name])
                result = _apply(session, plan, template, where, marks, guestinfo, recorder)
            except VSphereError as exc:
                result = VmResult(plan.vm.name, "failed", str(exc))
            except TRANSPORT_ERRORS as exc:
                # vCenter went away: every other VM would fail the same way, so the deploy stops here.
                during = f"deploying VM {plan.vm.name!r}; run deploy again once vCenter is back"
                raise lost(session.creds.server, exc, during) from None
        result.seconds = time.monotonic() - t0
        return result

    results: dict[str, VmResult] = {}
    todo = []
    for plan in plans:
        row = plan.existing
        if plan.action == "unchanged" and row is not None:
            message = "already deployed with this configuration"
            _, guest_status, _ = parse_status(row.extra)
            if secrets_to_remove(row.extra, guest_status):
                message += "; " + remove_secrets(row.obj, plan.vm.name)
            results[plan.vm.name] = VmResult(
                plan.vm.name, "unchanged", message, row.obj._moId, row.instance_uuid or None
            )
            recorder.emit("vm_unchanged", vm=plan.vm.name, moid=row.obj._moId)
        else:
            todo.append(plan)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="deploy") as pool:
        futures: list[tuple[_Plan, Future[VmResult]]] = [(pl, pool.submit(one, pl)) for pl in todo]
        try:
            for plan, future in futures:
                results[plan.vm.name] = future.result()
        except BaseException:
            # Ctrl-C or a lost connection: running clones finish (and clean up on failure); queued ones
            # never start. A clone cut off half-way is not stamped: the next deploy reports it.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    report.results = [results[v.name] for v in fleet.vms]
    report.max_in_flight = in_flight.max
    report.seconds = time.monotonic() - started
    return report


def resolve_template(names: Mapping[str, list[Any]], template: str, dc: Any) -> str:
    """The template name to clone: `template` itself, or the newest name (of `names`) matching it."""
    if not placeholders(template):
        if not names.get(template):
            raise NotFoundError(f"template {template!r} not found in datacenter {dc.name!r}")
        return template
    name = newest_match(template, list(names))
    if name is None:
        raise NotFoundError(f"no template matching {template!r} found in datacenter {dc.name!r}")
    LOG.info("template %s is the newest match of %s", name, template)
    return name


TEMPLATE_PROPS = ("name", "config.instanceUuid", "config.hardware.device", "config.extraConfig")


def read_template(
    session: Session, names: Mapping[str, list[Any]], name: str, where: inventory.Placement
) -> tuple[vmops.CloneSource, str, dict[str, str]]:
    """The template's clone source, instance UUID and extraConfig, read once per deploy or rollout (not per
    clone): its devices give the NIC change."""
    found = names.get(name, [])
    if len(found) > 1:
        raise VSphereError(f"template {name!r} is ambiguous: {len(found)} VMs have that name")
    obj = found[0]
    props = inventory.properties(session, [obj], vim.VirtualMachine, TEMPLATE_PROPS).get(obj)
    if props is None:
        raise NotFoundError(f"template {name!r} was deleted while deploying")
    devices = props.get("config.hardware.device")
    uuid = str(props.get("config.instanceUuid") or "")
    extra = vmops.options(props.get("config.extraConfig"))
    return vmops.clone_source(obj, name, devices, where.network), uuid, extra


def fleet_marks(fleet: str, template: str, template_uuid: str) -> dict[str, str]:
    """The non-guestinfo keys that make a clone the fleet's own (destroy, rollout, rotate, retention)."""
    return {KEY_FLEET: fleet, KEY_SOURCE_TEMPLATE: template, KEY_SOURCE_UUID: template_uuid}


def clone_fleet_vm(
    session: Session,
    vm: FleetVM,
    name: str,
    template: vmops.CloneSource,
    where: inventory.Placement,
    marks: dict[str, str],
    guestinfo: dict[str, str],
) -> tuple[Any, dict[str, str]]:
    """Clone `template` to VM `name` (powered off) for fleet VM `vm`, with its guestinfo and marks; then
    read the MAC vCenter gave its NIC and write the `guestinfo.metadata` whose network binds to it, before
    anything boots it. The clone and the metadata keys written (for the identity stamp's read-back).

    vCenter assigns the MAC (unique within that vCenter): a MAC chosen here could collide with another
    fleet's or any other VM's on the network. A clone whose metadata could not be written is deleted."""
    LOG.info("cloning %s from %s", name, template.name)
    annotation = f"arcbake fleet {marks[KEY_FLEET]}: {vm.role.value} {vm.hostname}"
    clone = vmops.clone(template, name, where, {**guestinfo, **marks}, annotation=annotation)
    try:
        metadata = metadata_values(vm, vmops.first_nic_mac(session, clone, name))
        vmops.write_extra_config(clone, metadata, f"writing the network metadata of VM {name!r}")
    except VSphereError:
        _delete_half_made(clone, name)
        raise
    return clone, metadata


def _delete_half_made(clone: Any, name: str) -> None:
    try:
        vmops.destroy(clone, name)
    except VSphereError as cleanup:
        LOG.warning("could not delete the half-deployed VM %s: %s", name, cleanup)


def _apply(
    session: Session,
    plan: _Plan,
    template: vmops.CloneSource,
    where: inventory.Placement,
    marks: dict[str, str],
    guestinfo: dict[str, str],
    rec: Recorder,
) -> VmResult:
    name = plan.vm.name
    action = "cloned"
    if plan.action == "replace" and plan.existing is not None:
        with rec.step("destroy", announce=False, vm=name):
            vmops.destroy(plan.existing.obj, name)
        action = "replaced"
    with rec.step("clone", announce=False, vm=name) as step:
        clone, metadata = clone_fleet_vm(session, plan.vm, name, template, where, marks, guestinfo)
        step.fields["moid"] = clone._moId
    try:
        with rec.step("power-on", announce=False, vm=name):
            vmops.power_on(clone, name, known_off=True)
        # Stamped last: a VM without it was not deployed completely and is never taken as unchanged. Its
        # read-back also checks the metadata written before power-on.
        config = vmops.set_extra_config(
            clone, {KEY_IDENTITY: plan.identity}, f"recording the identity of VM {name!r}", kept=metadata
        )
    except VSphereError:
        _delete_half_made(clone, name)
        raise
    uuid = str(config.instanceUuid) if config else None
    return VmResult(name, action, f"{plan.vm.role.value}, powered on", clone._moId, uuid)
