"""`builder rotate FLEET`: write a newer generation of secrets into the clones' guestinfo.

The values come from the fleet's secret references, read now (rotate the service principal secret or the
Git token at its source, export the new value, run rotate). Every owned VM of the fleet gets the same
new generation: one more than the highest the fleet has seen, whether written by builder (the
non-guestinfo key `arcbake.secrets.generation`) or reported by a guest (`generation` in its status).
The set goes into `guestinfo.arcbake.secrets` (gzip+base64, like deploy); firstboot takes it at its next
boot or `firstboot rotate` (arcbake-rotate.timer), signs in with it, updates the Flux Git credentials,
reports the generation in its status and overwrites the key with `---`.

Secret values are only ever in that key: never in a plan, report, log or another key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from builder import fleetvms
from builder import status as st
from builder.fleet import Fleet, resolve_secrets, secrets_json
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from builder.vsphere.connection import Session, VSphereError
from firstboot import contract
from firstboot.encoding import GZIP_BASE64, encode

# The generation builder last wrote into the VM (non-guestinfo: the guest cannot change it).
KEY_GENERATION = "arcbake.secrets.generation"


@dataclass
class VmRotation:
    """One VM of the rotation."""

    name: str
    action: str  # write | missing
    held: int | None = None  # the generation the guest reports
    written: int | None = None  # the generation builder wrote before
    done: str = ""
    record: fleetvms.VmRecord | None = field(default=None, repr=False)


@dataclass
class RotatePlan:
    """The new generation and the VMs that get it."""

    fleet: str
    generation: int
    vms: list[VmRotation]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (generations and names only)."""
        return {
            "fleet": self.fleet,
            "generation": self.generation,
            "vms": [
                {"name": v.name, "action": v.action, "held": v.held, "written": v.written, "done": v.done}
                for v in self.vms
            ],
        }

    def lines(self) -> list[str]:
        """One line per VM."""
        out = [f"rotate fleet {self.fleet}: secrets generation {self.generation}"]
        for v in self.vms:
            if v.action == "missing":
                out.append(f"  {v.name}: missing (not deployed), skipped")
            else:
                out.append(
                    f"  {v.name}: held {v.held or '-'}, written {v.written or '-'} -> {self.generation}"
                )
        return out


def _generations(rec: fleetvms.VmRecord) -> tuple[int | None, int | None]:
    status = st.parse_status(rec.extra)[1]
    held = status.generation if status is not None else None
    raw = rec.extra.get(KEY_GENERATION, "")
    written = int(raw) if raw.isdigit() else None
    return held, written


def current_generation(records: list[fleetvms.VmRecord], fleet: Fleet) -> int:
    """The highest secrets generation among the fleet's VMs (and rollout replacements), written or
    reported (1: deploy's)."""
    names = {v.name for v in fleet.vms} | {v.name + fleetvms.ROLLOUT_SUFFIX for v in fleet.vms}
    highest = 1
    for rec in records:
        if rec.name in names and rec.owned_by(fleet.name):
            held, written = _generations(rec)
            highest = max(highest, held or 0, written or 0)
    return highest


def plan(session: Session, fleet: Fleet) -> RotatePlan:
    """Read every fleet VM's generations; the new one is the fleet's highest plus one."""
    dc = inventory.datacenter(session, fleet.placement.datacenter)
    records = fleetvms.read_all(session, dc)
    found = fleetvms.by_name(records)
    rows: list[VmRotation] = []
    for vm in fleet.vms:
        owned = [r for r in found.get(vm.name, []) if r.owned_by(fleet.name)]
        if not owned:
            rows.append(VmRotation(vm.name, "missing"))
            continue
        held, written = _generations(owned[0])
        rows.append(VmRotation(vm.name, "write", held, written, record=owned[0]))
    return RotatePlan(fleet.name, current_generation(records, fleet) + 1, rows)


def apply(
    the_plan: RotatePlan,
    fleet: Fleet,
    environ: Mapping[str, str],
    progress: Callable[[str], None] = lambda _m: None,
) -> bool:
    """Write the new generation into every planned VM; True when every write held."""
    secrets = resolve_secrets(fleet, environ)  # FleetError (exit 3) before anything is written
    ok = True
    for row in the_plan.vms:
        if row.record is None:
            continue
        newer = secrets[row.name].model_copy(update={"generation": the_plan.generation})
        values = {
            contract.KEY_SECRETS: encode(secrets_json(newer), GZIP_BASE64),
            contract.KEY_SECRETS + contract.ENCODING_SUFFIX: GZIP_BASE64,
            KEY_GENERATION: str(the_plan.generation),
        }
        try:
            vmops.set_extra_config(row.record.obj, values, f"writing secrets generation to VM {row.name!r}")
            row.done = "written"
        except VSphereError as exc:
            row.done = f"failed: {exc}"
            ok = False
        progress(f"{row.name}: generation {the_plan.generation} {row.done}")
    return ok
