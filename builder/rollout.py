"""`builder rollout FLEET --template NAME`: move a fleet onto a newer template one VM at a time.

For each VM not yet on the target template, or on it with another configuration than the fleet file
gives it (its stamped deploy identity differs), in this order per cluster: agents, then joining servers,
then the initialising server (a server is taken down only while every other server of its cluster is
reported Ready, so an HA cluster keeps its etcd quorum). The initialising server's replacement joins a
surviving server instead of `cluster-init` (which would start a second etcd cluster) and keeps the
cluster's Arc and Flux, finding them already connected (`_as_replaced`):

1. clone the replacement `NAME.rollout` from the target template, powered off, with the VM's guestinfo
   and the fleet's marks (the disk copy, the long part, happens while the old VM still serves);
2. power off the old VM; have a server of the cluster delete its Node (`guestinfo.arcbake.nodes-delete`
   on the server's VM with a fresh request id, acted on by the server's `firstboot rotate` timer,
   confirmed by that id in its status field `nodes_delete_id`, not by the name alone: the status keeps
   the last `nodes_deleted` with a fresh `updated`, so an earlier request for the same name would pass
   for this one, and the key would be removed while the server still acts on it): K3s refuses a node
   joining under a name it holds another node's password for (k3s-io/k3s `pkg/nodepassword`), and the
   replacement, a new machine, has a new password; then power
   on the replacement (same hostname and address: they never run at once), remembering when;
3. wait for the replacement's `guestinfo.arcbake.status` to say `done` and, for an agent, for the
   initialising server's status (reported after that moment) to list the node as Ready;
4. delete the old VM, rename the replacement to `NAME` and stamp its deploy identity.

A failure or a timeout at 3 powers the replacement off and the old VM back on (the fleet keeps
serving) and stops the rollout; the failed replacement stays, powered off, for diagnosis and is cloned
afresh by the next run. Every step is found again from vSphere, so a rollout interrupted anywhere
resumes by running it again. A single-server cluster cannot stay up while its server is replaced: it is
refused unless `--rebuild-cluster`, which deletes the server and its Arc connected cluster first, then
brings the replacement up (it connects Arc anew), then rolls the agents.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from builder import fleetvms, topology
from builder import status as st
from builder.azure_arm import ArcClusters, AzureError, AzureSettings, ClusterRef
from builder.deploy import (
    KEY_IDENTITY,
    clone_fleet_vm,
    fleet_marks,
    guestinfo_values,
    read_template,
    resolve_template,
)
from builder.fleet import Fleet, FleetVM, resolve_secrets, server_url
from builder.rotate import KEY_GENERATION, current_generation
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from builder.vsphere.connection import Session, VSphereError
from firstboot.contract import (
    KEY_METADATA,
    KEY_NODES_DELETE,
    NodesDeleteRequest,
    OnboardingConfig,
    Role,
    State,
)

LOG = logging.getLogger(__name__)

DEFAULT_WAIT = 3600.0
DEFAULT_INTERVAL = 10.0


def _confirms(extra: Mapping[str, str], request: NodesDeleteRequest) -> bool:
    """Whether a server's status (in its VM's extraConfig) reports THIS request carried out: its id, not
    only its names (the status keeps the last report with a fresh `updated`)."""
    status = st.parse_status(extra)[1]
    return (
        status is not None
        and status.nodes_delete_id == request.request_id
        and set(request.names) <= set(status.nodes_deleted)
    )


class RolloutError(VSphereError):
    """The rollout stopped (refused plan, failed or timed-out replacement); the message says what is left."""


@dataclass
class Step:
    """One VM of the rollout plan."""

    vm: FleetVM
    cluster: str
    action: str  # replace | rebuild | current | missing
    reason: str = ""
    done: str = ""


@dataclass
class RolloutPlan:
    """What rollout will do, in order."""

    fleet: str
    template: str
    steps: list[Step] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The plan as text, one line per VM, in rollout order."""
        out = [f"rollout of fleet {self.fleet} onto template {self.template}:"]
        for n, s in enumerate(self.steps, 1):
            out.append(f"  {n}. {s.vm.name} ({s.vm.role.value}, cluster {s.cluster}): {s.action} {s.reason}")
        out += [f"  refused: {r}" for r in self.refused]
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready plan and outcome."""
        return {
            "fleet": self.fleet,
            "template": self.template,
            "refused": self.refused,
            "steps": [
                {
                    "vm": s.vm.name,
                    "role": s.vm.role.value,
                    "cluster": s.cluster,
                    "action": s.action,
                    "reason": s.reason,
                    "done": s.done,
                }
                for s in self.steps
            ],
        }


@dataclass
class Options:
    """How rollout waits and what it may do."""

    rebuild_cluster: bool = False
    wait_timeout: float = DEFAULT_WAIT
    interval: float = DEFAULT_INTERVAL
    progress: Callable[[str], None] = lambda _msg: None


def _order(members: list[FleetVM], root: str) -> list[FleetVM]:
    agents = [m for m in members if m.role is Role.AGENT]
    joining = [m for m in members if m.role is Role.SERVER and m.name != root]
    first = [m for m in members if m.name == root]
    return agents + joining + first


def plan(session: Session, fleet: Fleet, template: str, *, rebuild_cluster: bool = False) -> RolloutPlan:
    """Classify every VM against the target template; nothing changes."""
    dc = inventory.datacenter(session, fleet.placement.datacenter)
    records = fleetvms.read_all(session, dc)
    found = fleetvms.by_name(records)
    target = resolve_template({n: [r.obj for r in rs] for n, rs in found.items()}, template, dc)
    out = RolloutPlan(fleet.name, target)
    # The same check as deploy: the new template's firewall must carry the fleet's clusters.
    extra = found[target][0].extra if len(found.get(target, [])) == 1 else {}
    out.refused += topology.profile_problems(fleet.vms, extra.get(topology.PROFILE_KEY), target)
    for root, members in fleetvms.clusters(fleet).items():
        servers = [m for m in members if m.role is Role.SERVER]
        single = len(servers) == 1
        order = _order(members, root)
        if single and rebuild_cluster:
            order = servers + [m for m in order if m.role is Role.AGENT]
        for vm in order:
            old = [r for r in found.get(vm.name, []) if r.owned_by(fleet.name)]
            new = [r for r in found.get(vm.name + fleetvms.ROLLOUT_SUFFIX, []) if r.owned_by(fleet.name)]
            foreign = [r for r in found.get(vm.name, []) if not r.owned_by(fleet.name)]
            if foreign:
                out.refused.append(f"VM {vm.name!r} exists but is not owned by fleet {fleet.name!r}")
                continue
            if len(old) > 1 or len(new) > 1:
                out.refused.append(f"VM {vm.name!r} is ambiguous ({len(old)} + {len(new)} VMs of that name)")
                continue
            if not old and not new:
                out.steps.append(Step(vm, root, "missing", "(not deployed: `builder deploy` first)"))
                continue
            on_target = bool(old) and old[0].source_template == target
            # A VM on the target whose fleet file entry changed (its stamped deploy identity differs) is
            # replaced too: the safe way to do what `builder deploy --replace` refuses in a live cluster.
            if (
                on_target
                and not new
                and old[0].extra.get(KEY_IDENTITY) == vm.identity(target, fleet.placement)
            ):
                out.steps.append(Step(vm, root, "current", f"(already on {target})"))
                continue
            was = old[0].source_template if old else "(old VM already deleted)"
            if on_target:
                was = f"{was} with another configuration"
            resume = " (resuming)" if new else ""
            if vm.role is Role.SERVER and single:
                if not rebuild_cluster:
                    out.refused.append(
                        f"cluster {root} has a single server ({vm.name}): it cannot stay up while its "
                        "server is replaced; use --rebuild-cluster to rebuild it (and reconnect Arc)"
                    )
                    continue
                out.steps.append(Step(vm, root, "rebuild", f"from {was}{resume}"))
            else:
                out.steps.append(Step(vm, root, "replace", f"from {was}{resume}"))
    missing = [s.vm.name for s in out.steps if s.action == "missing"]
    if missing:
        out.refused.append(f"not deployed: {', '.join(missing)} (run `builder deploy` first)")
    return out


class _Runner:
    """Carries out a plan; every decision re-reads vSphere, so a rerun resumes."""

    def __init__(
        self, session: Session, fleet: Fleet, the_plan: RolloutPlan, environ: Mapping[str, str], opts: Options
    ) -> None:
        self.session = session
        self.fleet = dataclasses.replace(fleet, template=the_plan.template)
        self.plan = the_plan
        self.opts = opts
        self.where = inventory.placement_of(session, fleet.placement)
        self.dc = self.where.datacenter
        names = inventory.vms_by_name(session, self.dc, [the_plan.template])
        self.template, uuid, _extra = read_template(session, names, the_plan.template, self.where)
        self.marks = fleet_marks(fleet.name, the_plan.template, uuid)
        self.secrets = resolve_secrets(fleet, environ)
        self.generation = current_generation(fleetvms.read_all(session, self.dc), fleet)
        self.environ = environ
        self.by_name = {v.name: v for v in fleet.vms}

    def _records(self, name: str) -> tuple[fleetvms.VmRecord | None, fleetvms.VmRecord | None]:
        found = fleetvms.by_name(fleetvms.read_all(self.session, self.dc))
        old = next((r for r in found.get(name, []) if r.owned_by(self.fleet.name)), None)
        new = next(
            (r for r in found.get(name + fleetvms.ROLLOUT_SUFFIX, []) if r.owned_by(self.fleet.name)), None
        )
        return old, new

    def _replacement_status(self, name: str) -> tuple[str, Any]:
        _, new = self._records(name)
        if new is None:
            return st.MISSING, None
        state, status, _msg = st.parse_status(new.extra)
        return state, status

    def _server_status(self, root: str) -> Any:
        old, _new = self._records(root)
        if old is None:
            return None
        return st.parse_status(old.extra)[1]

    def _peers_ready(self, step: Step) -> str | None:
        # Quorum: a server goes down only while every other server of its cluster is reported Ready.
        status = self._server_status(step.cluster)
        members = fleetvms.clusters(self.fleet)[step.cluster]
        peers = [m.hostname for m in members if m.role is Role.SERVER and m.name != step.vm.name]
        ready = set(status.nodes_ready) if status is not None else set()
        missing = [p for p in peers if p not in ready]
        return f"servers {', '.join(missing)} are not reported Ready" if missing else None

    def _wait(self, step: Step, since: datetime) -> str | None:
        """None when the replacement is done (and its node Ready); else why not."""
        name = step.vm.name
        deadline = time.monotonic() + self.opts.wait_timeout
        why = "no report yet"
        while True:
            state, status = self._replacement_status(name)
            if state == State.FAILED.value:
                return f"the replacement failed at step {status.step}: {status.message}"
            if state == State.DONE.value:
                if step.vm.role is not Role.AGENT:
                    return None
                server = self._server_status(step.cluster)
                if server is not None and server.updated >= since and step.vm.hostname in server.nodes_ready:
                    return None
                why = f"node {step.vm.hostname} is not reported Ready by server {step.cluster} yet"
            else:
                why = f"replacement state {state}" + (f" at step {status.step}" if status else "")
            if time.monotonic() >= deadline:
                return f"not done within {self.opts.wait_timeout:g}s: {why}"
            time.sleep(self.opts.interval)

    def _free_node_name(self, step: Step) -> str | None:
        """Have a server of the cluster delete the replaced VM's Node (see the module doc); None when the
        name is free, else why not. The initialising server asks for the others; a joining server asks
        for it (`clusters` lists the initialising server first)."""
        members = fleetvms.clusters(self.fleet)[step.cluster]
        servers = [m for m in members if m.role is Role.SERVER and m.name != step.vm.name]
        if not servers:
            return None  # a single-server cluster is rebuilt: its replacement starts a new cluster
        via, name = servers[0].name, step.vm.hostname
        rec, _ = self._records(via)
        if rec is None:
            return f"server {via} is missing: nobody can delete node {name}"
        # A new id per request: only the server's report of THIS request confirms it (see the module doc).
        request = NodesDeleteRequest(request_id=secrets.token_hex(8), names=[name])
        what = f"asking server {via} to delete node {name}"
        vmops.write_extra_config(rec.obj, {KEY_NODES_DELETE: request.to_value()}, what)
        # Read back, but the server may act between the write and the read (overwrite the key with `---`
        # and report the id): a read-back of the value alone would then fail a request that succeeded.
        extra = vmops.extra_config(rec.obj)
        if extra.get(KEY_NODES_DELETE) != request.to_value() and not _confirms(extra, request):
            raise VSphereError(f"{what}: the VM did not keep {KEY_NODES_DELETE}")
        self.opts.progress(f"{step.vm.name}: waiting for server {via} to delete node {name}")
        deadline = time.monotonic() + self.opts.wait_timeout
        while True:
            rec, _ = self._records(via)
            if rec is not None and _confirms(rec.extra, request):
                # The guest's `---` is runtime-only: the .vmx keeps the request, which a reboot of the
                # server would carry out again on the (by then serving) replacement's Node.
                vmops.remove_extra_config(rec.obj, [KEY_NODES_DELETE], f"removing the request from {via}")
                return None
            if time.monotonic() >= deadline:
                return f"server {via} did not report node {name} deleted within {self.opts.wait_timeout:g}s"
            time.sleep(self.opts.interval)

    def _as_replaced(self, step: Step) -> FleetVM:
        """The VM as its replacement boots. The initialising server of an etcd cluster is replaced while
        its other servers serve: with its `cluster-init` and no `server:`, the replacement (no etcd data)
        would start a second cluster beside them (k3s-io/k3s `pkg/etcd/etcd.go` `Start`; docs.k3s.io
        datastore/ha-embedded joins every server but the first with `--server`). So it joins the server
        `_free_node_name` asks (Ready, checked before the old VM went down) and keeps the cluster's Arc
        and Flux (`onboards_cluster`): they find the cluster already connected by its own agents, and it
        stays the server that reports `nodes_ready` and that `builder rotate` updates."""
        k3s = step.vm.config.k3s
        if step.action != "replace" or not k3s.cluster_init:
            return step.vm
        members = fleetvms.clusters(self.fleet)[step.cluster]
        via = next(m for m in members if m.role is Role.SERVER and m.name != step.vm.name)
        url = server_url(via.network, via.hostname, via.config.domain)
        joins = k3s.model_copy(update={"cluster_init": False, "server_url": url})
        config = step.vm.config.model_copy(update={"k3s": joins})
        # Checked as firstboot will read it (guestinfo.arcbake.config is this JSON).
        return dataclasses.replace(
            step.vm, config=OnboardingConfig.model_validate_json(config.model_dump_json())
        )

    def _rebuild_arc(self, step: Step) -> None:
        arc = step.vm.config.arc
        if arc is None:
            return
        ref = ClusterRef(arc.subscription_id, arc.resource_group, arc.cluster_name)
        with ArcClusters(AzureSettings.from_env(self.environ, arc.tenant_id)) as arm:
            gone = arm.delete(ref)
        self.opts.progress(f"{step.vm.name}: Arc {ref} {'deleted' if gone else 'already absent'}")

    def one(self, step: Step) -> None:
        name, temp = step.vm.name, step.vm.name + fleetvms.ROLLOUT_SUFFIX
        say = self.opts.progress
        old, new = self._records(name)
        if new is not None and st.parse_status(new.extra)[0] == State.FAILED.value and old is not None:
            say(f"{name}: deleting the failed replacement of an earlier run")
            vmops.destroy(new.obj, temp)
            new = None
        elif new is not None and not new.extra.get(KEY_METADATA):
            # Cut off between its clone and its network metadata: booting it would bind no address.
            say(f"{name}: deleting the half-made replacement of an earlier run")
            vmops.destroy(new.obj, temp)
            new = None
        if new is None:
            say(f"{name}: cloning {temp} from {self.plan.template}")
            # The replacement gets the secrets generation the fleet is at (after `builder rotate`).
            secrets = self.secrets[name].model_copy(update={"generation": self.generation})
            booting = self._as_replaced(step)
            guestinfo = {**guestinfo_values(booting, secrets), KEY_GENERATION: str(self.generation)}
            obj, _ = clone_fleet_vm(
                self.session, booting, temp, self.template, self.where, self.marks, guestinfo
            )
            booted = False
        else:
            obj = new.obj
            booted = st.parse_status(new.extra)[0] != st.NO_REPORT
        if step.action == "rebuild":
            # The single server goes first: the cluster is down until the replacement is done.
            if old is not None:
                say(f"{name}: rebuilding the cluster: deleting the old server")
                vmops.destroy(old.obj, name)
                old = None
            if not booted:
                self._rebuild_arc(step)
        if old is not None and old.power != "poweredOff":
            if step.vm.role is Role.SERVER:
                blocked = self._peers_ready(step)
                if blocked:
                    raise RolloutError(f"{name}: not taken down to keep the etcd quorum: {blocked}")
            vmops.power_off(old.obj, name)
        if step.action == "replace" and not booted:
            blocked = self._free_node_name(step)
            if blocked is not None:
                if old is not None:
                    vmops.power_on(old.obj, name)
                raise RolloutError(
                    f"{name}: {blocked}; the old VM is powered on again, {temp} was not started"
                )
        since = datetime.now(UTC).replace(microsecond=0)
        vmops.power_on(obj, temp)
        say(f"{name}: {temp} powered on; waiting for it to report done")
        problem = self._wait(step, since)
        if problem is not None:
            vmops.power_off(obj, temp)
            if old is not None:
                if step.action == "replace":
                    # The replacement may have registered the name with its password: free it again,
                    # or K3s would now refuse the old VM.
                    freed = self._free_node_name(step)
                    problem += f"; {freed}" if freed else ""
                vmops.power_on(old.obj, name)
            kept = "the old VM is powered on again" if old is not None else "no old VM to fall back to"
            raise RolloutError(f"{name}: {problem}; {kept}, {temp} is left powered off for diagnosis")
        if old is not None:
            vmops.destroy(old.obj, name)
        vmops.rename(obj, temp, name)
        identity = step.vm.identity(self.plan.template, self.fleet.placement)
        vmops.set_extra_config(obj, {KEY_IDENTITY: identity}, f"recording the identity of VM {name!r}")
        say(f"{name}: on {self.plan.template}")


def run(
    session: Session, fleet: Fleet, the_plan: RolloutPlan, environ: Mapping[str, str], opts: Options
) -> bool:
    """Carry out `the_plan` one VM at a time; False (with `done` set on the failed step) on the first
    failure, which leaves every other VM as it was."""
    if the_plan.refused:
        raise RolloutError("; ".join(the_plan.refused) + "; nothing was changed")
    runner = _Runner(session, fleet, the_plan, environ, opts)
    for step in the_plan.steps:
        if step.action == "current":
            step.done = "current"
            continue
        try:
            runner.one(step)
        except (VSphereError, AzureError) as exc:
            step.done = f"failed: {exc}"
            return False
        step.done = "replaced"
    return True
