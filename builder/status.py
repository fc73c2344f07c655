"""`builder status FLEET`: each VM's `guestinfo.arcbake.status`, read through the vSphere API.

firstboot inside a clone writes the status key with `vmware-rpctool info-set`; vSphere shows it in the
VM's extraConfig. A VM whose guest never wrote it is reported as `no report` (not yet booted, firstboot
not reached, or no guest OS at all: the bundled simulator runs none).

Everything the guest wrote is untrusted: the status is size-capped before it is decoded, and every string
of it passes `guesttext.clean()` before it reaches a terminal or JSON.

Once a clone reports past `metadata` (it has persisted its secrets, 0600, bound to its instance-id),
`guestinfo.arcbake.secrets` is removed from the VM's configuration: the guest's own `---` overwrite is
runtime-only and would leave the deployed value in the `.vmx` on the datastore. When the status and the
deployed secrets both carry a `generation`, only a status that has reached that generation counts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from builder.fleet import Fleet
from builder.guesttext import clean
from builder.texttable import aligned
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from builder.vsphere.connection import Session, VSphereError
from firstboot import contract
from firstboot.encoding import DecodeError, decode

LOG = logging.getLogger(__name__)

NO_REPORT = "no report"
MISSING = "missing"
UNREADABLE = "unreadable"
# What a status row needs (the name is known from the query of names).
STATUS_PROPS = ("config.extraConfig", "runtime.powerState", "config.template")
FINAL = {contract.State.DONE.value, contract.State.FAILED.value}
# A status is a few hundred bytes (32 step timings about 4 KiB); anything far larger is not read.
MAX_STATUS_CHARS = 64 * 1024
SECRET_KEYS = (contract.KEY_SECRETS, contract.KEY_SECRETS + contract.ENCODING_SUFFIX)
# The extraConfig keys a status row reads (the rest of a VM's extraConfig is not decoded).
STATUS_KEYS = frozenset((contract.KEY_STATUS, contract.KEY_STATUS + contract.ENCODING_SUFFIX, *SECRET_KEYS))
SECRETS_REMOVED = (
    "guestinfo.arcbake.secrets removed from the VM's configuration (the clone reported past metadata)"
)


@dataclass
class VmStatus:
    """One row of the status table."""

    name: str
    state: str  # a contract.State value, or no report / missing / unreadable
    step: str | None = None
    message: str = ""
    remedy: str | None = None
    updated: str | None = None
    power: str | None = None
    generation: int | None = None  # of the secrets the guest has taken in
    # The guest's step timings (contract.StepTiming as JSON: step, started, ended, attempts, outcome).
    steps: list[dict[str, Any]] = field(default_factory=list)
    secrets: str | None = None  # SECRETS_REMOVED, or why they could not be removed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        return dict(self.__dict__)

    def timings(self) -> list[contract.StepTiming]:
        """The step timings as models."""
        return [contract.StepTiming.model_validate(t) for t in self.steps]

    def took(self) -> str:
        """`12.3s (slowest k3s 8.1s)`: first step start to last step end, and the longest step run."""
        done = [t for t in self.timings() if t.ended is not None]
        if not done:
            return "-"
        total = (max(t.ended for t in done if t.ended) - min(t.started for t in done)).total_seconds()
        slowest = max(done, key=lambda t: t.seconds or 0.0)
        return f"{total:.1f}s (slowest {slowest.step} {slowest.seconds or 0.0:.1f}s)"


# govmomi's simulator answers with a fixed vCenter instance UUID (govmomi simulator/vpx/service_content.go,
# every release since 2017); newer releases also add "(govmomi simulator)" to the product name.
SIMULATOR_UUID = "dbed6e0c-bd88-4ef6-b594-21283e1c677f"


def is_simulator(session: Session) -> bool:
    """True when the endpoint is govmomi's vCenter simulator, from the service content read at login
    (no round trip)."""
    about = session.content.about
    names = f"{about.name or ''} {about.fullName or ''}"
    return about.instanceUuid == SIMULATOR_UUID or "govmomi simulator" in names


def parse_status(extra: Mapping[str, str]) -> tuple[str, contract.Status | None, str]:
    """(state, Status or None, message) from a VM's extraConfig; the message is already `clean()`."""
    raw = extra.get(contract.KEY_STATUS, "")
    if not raw.strip():
        return NO_REPORT, None, ""
    if len(raw) > MAX_STATUS_CHARS:
        return UNREADABLE, None, f"guestinfo.arcbake.status is too large ({len(raw)} characters)"
    try:
        text = decode(raw, extra.get(contract.KEY_STATUS + contract.ENCODING_SUFFIX))
        status = contract.Status.model_validate_json(text)
    except (DecodeError, ValidationError, ValueError) as exc:
        # Validation errors quote the offending input: it is guest text like the rest.
        first = clean(str(exc).splitlines()[0])
        return UNREADABLE, None, f"guestinfo.arcbake.status is not a valid status: {first}"
    return status.state.value, status, clean(status.message)


def _row(name: str, power: str, extra: Mapping[str, str]) -> tuple[VmStatus, contract.Status | None]:
    state, status, message = parse_status(extra)
    row = VmStatus(name, state, message=message, power=power)
    if status is not None:
        row.step = clean(status.step, 40) if status.step else None
        row.remedy = clean(status.remedy) if status.remedy else None
        row.updated = status.updated.isoformat()
        row.generation = status.generation
        row.steps = [t.model_dump(mode="json") for t in status.steps]
    return row, status


def past_metadata(status: contract.Status) -> bool:
    """True once the clone has taken in its secrets: done, or running/failed at a step after metadata."""
    if status.state is contract.State.DONE:
        return True
    if any(t.step == "metadata" and t.outcome.value == "done" for t in status.steps):
        return True
    running_or_failed = status.state in (contract.State.RUNNING, contract.State.FAILED)
    return running_or_failed and status.step not in (None, "metadata")


def _deployed_generation(extra: Mapping[str, str]) -> int | None:
    # The secrets stay in memory here, never logged: only their generation is looked at.
    try:
        text = decode(extra[contract.KEY_SECRETS], extra.get(SECRET_KEYS[1]))
        generation = json.loads(text).get("generation")
    except (KeyError, DecodeError, ValueError, AttributeError):
        return None
    return generation if isinstance(generation, int) else None


def secrets_to_remove(extra: Mapping[str, str], status: contract.Status | None) -> bool:
    """True when the VM's configuration still holds secrets that the clone has taken in."""
    if status is None or not any(extra.get(k) for k in SECRET_KEYS) or not past_metadata(status):
        return False
    # After `builder rotate`, a clone that still reports the older generation has not read the new set.
    deployed = _deployed_generation(extra)
    return not (status.generation is not None and deployed is not None and status.generation < deployed)


def remove_secrets(vm: Any, name: str) -> str:
    """Remove the secrets keys from the VM's configuration; what to tell the operator."""
    try:
        vmops.remove_extra_config(vm, SECRET_KEYS, f"removing the secrets from VM {name!r}")
    except VSphereError as exc:
        LOG.warning("%s", exc)
        return f"guestinfo.arcbake.secrets could not be removed from the VM's configuration: {exc}"
    LOG.debug("VM %s: %s", name, SECRETS_REMOVED)
    return SECRETS_REMOVED


def read_status(session: Session, fleet: Fleet, *, clear_secrets: bool = True) -> list[VmStatus]:
    """Status of every VM of the fleet, in fleet order; secrets removed where the clone is past metadata.

    Two round trips whatever the fleet's size: the datacenter and the names of its VMs in one
    PropertyCollector query, then extraConfig and power state of the fleet's VMs in another
    (bench/fleet_deploy.py counts them). Removing secrets adds one reconfiguration per VM, once in its life.
    """
    names = [v.name for v in fleet.vms]
    _, by_name = inventory.datacenter_and_vms(session, fleet.placement.datacenter, names)
    found = vmops.read_rows(session, by_name, names, STATUS_PROPS, STATUS_KEYS)
    rows: list[VmStatus] = []
    for fvm in fleet.vms:
        vms = found.get(fvm.name, [])
        if not vms:
            rows.append(VmStatus(fvm.name, MISSING, message="no such VM (not deployed?)"))
            continue
        vm = vms[-1]
        row, status = _row(fvm.name, vm.power, vm.extra)
        # A template is never reconfigured, even when it carries a clone's keys (made from an onboarded VM).
        if clear_secrets and not vm.is_template and secrets_to_remove(vm.extra, status):
            row.secrets = remove_secrets(vm.obj, fvm.name)
        rows.append(row)
    return rows


def cannot_report(row: VmStatus, simulator: bool) -> bool:
    """True when waiting longer cannot change this VM's row: it is missing, powered off, or it is a
    simulator VM without a report (the simulator runs no guest OS and no VMware Tools)."""
    if row.state in FINAL:
        return False
    return row.state == MISSING or row.power == "poweredOff" or (simulator and row.state == NO_REPORT)


def slowest_pending(rows: list[VmStatus], now: datetime | None = None) -> tuple[VmStatus, float] | None:
    """The unfinished VM that has been on its current step longest, and for how many seconds.

    The current step's start comes from the guest's timings (the newest running entry), else from
    the status's `updated`; VMs without a report have neither and are left out."""
    now = now or datetime.now(UTC)
    best: tuple[VmStatus, float] | None = None
    for row in rows:
        if row.state in FINAL:
            continue
        running = [t for t in row.timings() if t.outcome is contract.StepOutcome.RUNNING]
        since = running[-1].started if running else None
        if since is None and row.updated:
            since = datetime.fromisoformat(row.updated)
        if since is None:
            continue
        seconds = max(0.0, (now - since).total_seconds())
        if best is None or seconds > best[1]:
            best = (row, seconds)
    return best


def wait_status(
    session: Session,
    fleet: Fleet,
    timeout: float,
    interval: float = 10.0,
    on_poll: Callable[[list[VmStatus]], None] | None = None,
    simulator: bool = False,
) -> tuple[list[VmStatus], bool]:
    """Poll until every VM is done or failed, or `timeout` passes; (rows, True when all finished).

    Returns at once, not finished, when every unfinished VM is one that `cannot_report`."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_status(session, fleet)
        if on_poll is not None:
            on_poll(rows)
        if all(r.state in FINAL for r in rows):
            return rows, True
        if all(r.state in FINAL or cannot_report(r, simulator) for r in rows):
            return rows, False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return rows, False
        time.sleep(min(interval, remaining))


def table(rows: list[VmStatus]) -> str:
    """A plain aligned table: VM, power, state, step, time taken (and slowest step), message, updated;
    the secrets generation when some guest reports one."""
    header = ["VM", "POWER", "STATE", "STEP", "TOOK", "MESSAGE", "UPDATED"]
    body = [
        [
            r.name,
            r.power or "-",
            r.state,
            r.step or "-",
            r.took(),
            (r.message or "-") + (f" (remedy: {r.remedy})" if r.remedy else ""),
            r.updated or "-",
        ]
        for r in rows
    ]
    if any(r.generation is not None for r in rows):
        header.append("GEN")
        for line, r in zip(body, rows, strict=True):
            line.append("-" if r.generation is None else str(r.generation))
    return aligned(header, body)
