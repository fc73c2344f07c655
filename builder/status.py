"""`builder status FLEET`: each VM's `guestinfo.arcbake.status`, read through the vSphere API.

firstboot inside a clone writes the status key with `vmware-rpctool info-set`; vSphere shows it in the
VM's extraConfig. A VM whose guest never wrote it is reported as `no report` (not yet booted, firstboot
not reached, or no guest OS at all: the bundled simulator runs none).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from builder.fleet import Fleet
from builder.texttable import aligned
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from builder.vsphere._vmomi import vmodl
from builder.vsphere.connection import Session
from firstboot import contract
from firstboot.encoding import DecodeError, decode

LOG = logging.getLogger(__name__)

NO_REPORT = "no report"
MISSING = "missing"
UNREADABLE = "unreadable"
# What a status row needs (the name is known from the query of names).
STATUS_PROPS = ("config.extraConfig", "runtime.powerState")
FINAL = {contract.State.DONE.value, contract.State.FAILED.value}


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

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        return dict(self.__dict__)


def is_simulator(session: Session) -> bool:
    """True when the endpoint is govmomi's vCenter simulator (it publishes `vcsim.server.url`)."""
    try:
        return bool(session.content.setting.QueryView(name="vcsim.server.url"))
    except vmodl.MethodFault:
        return False


def parse_status(extra: dict[str, str]) -> tuple[str, contract.Status | None, str]:
    """(state, Status or None, message) from a VM's extraConfig."""
    raw = extra.get(contract.KEY_STATUS, "")
    if not raw.strip():
        return NO_REPORT, None, ""
    try:
        text = decode(raw, extra.get(contract.KEY_STATUS + contract.ENCODING_SUFFIX))
        status = contract.Status.model_validate_json(text)
    except (DecodeError, ValidationError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        return UNREADABLE, None, f"guestinfo.arcbake.status is not a valid status: {first}"
    return status.state.value, status, status.message


def read_status(session: Session, fleet: Fleet) -> list[VmStatus]:
    """Status of every VM of the fleet, in fleet order.

    Round trips do not grow with the fleet: the datacenter, the names of its VMs, then name, extraConfig
    and power state of the fleet's VMs in one PropertyCollector query (bench/fleet_deploy.py counts them).
    """
    dc = inventory.datacenter(session, fleet.placement.datacenter)
    names = [v.name for v in fleet.vms]
    found = vmops.read_rows(session, inventory.vms_by_name(session, dc, names), names, STATUS_PROPS)
    rows: list[VmStatus] = []
    for fvm in fleet.vms:
        vms = found.get(fvm.name, [])
        if not vms:
            rows.append(VmStatus(fvm.name, MISSING, message="no such VM (not deployed?)"))
            continue
        vm = vms[-1]
        state, status, message = parse_status(vm.extra)
        row = VmStatus(fvm.name, state, message=message, power=vm.power)
        if status is not None:
            row.step = status.step
            row.remedy = status.remedy
            row.updated = status.updated.isoformat()
        rows.append(row)
    return rows


def wait_status(
    session: Session,
    fleet: Fleet,
    timeout: float,
    interval: float = 10.0,
    on_poll: Callable[[list[VmStatus]], None] | None = None,
) -> tuple[list[VmStatus], bool]:
    """Poll until every VM is done or failed, or `timeout` passes; (rows, True when all finished)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_status(session, fleet)
        if on_poll is not None:
            on_poll(rows)
        if all(r.state in FINAL for r in rows):
            return rows, True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return rows, False
        time.sleep(min(interval, remaining))


def table(rows: list[VmStatus]) -> str:
    """A plain aligned table: VM, power, state, step, message, updated."""
    header = ("VM", "POWER", "STATE", "STEP", "MESSAGE", "UPDATED")
    body = [
        (
            r.name,
            r.power or "-",
            r.state,
            r.step or "-",
            (r.message or "-") + (f" (remedy: {r.remedy})" if r.remedy else ""),
            r.updated or "-",
        )
        for r in rows
    ]
    return aligned(header, body)
